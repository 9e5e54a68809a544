#!/usr/bin/python3
"""Plot a nanomoe run's metrics and routing statistics (run.h5) as PNG files.

Reads the run.h5 a training run writes (README.md, "run.h5: metrics and
routing statistics"), from any rank count, and writes into DIR (created if
missing) these files, every one 800 x 500 pixels (8 x 5 inches at 100 dpi):

  loss.png             training loss and CE (/metrics/loss, ce: means over
                       each row's interval) and validation loss (the finite
                       points of /metrics/val_loss) against /metrics/step
  expert_load_L<i>.png one per layer i: heatmap of the expert load, rows =
                       /routing/step, columns = experts, value = the expert's
                       fraction of the row's token copies (tokens_per_expert,
                       all top-k slots); the even share is 1/E
  router_entropy.png   mean entropy of the full router softmax, all layers,
                       with the maximum ln(E) marked
  dropped.png          token copies dropped by the capacity limit per row,
                       one line per layer (all zero when dropless)
  rank_imbalance.png   all-to-all imbalance per layer: max / mean over ranks
                       of the rows each rank's experts received
                       (tokens_per_rank); 1 = perfectly even. A 1-rank run
                       gives a flat line at 1. The ranks of a row are its
                       columns up to the last nonzero one (a run resumed on
                       another rank count leaves zero columns for ranks that
                       did not exist in a row).

The paths written are printed, one per line. Exit status: 0 on success, 1 on
a run file without rows or with missing datasets, 2 on a file that is not a
nanomoe run file (a checkpoint included).
"""
import argparse
import os
import sys

import nmfiles

try:
    import h5py
    import numpy as np
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError as e:  # pragma: no cover
    sys.exit(f"plot_run: {e}: install python3-h5py, python3-numpy and python3-matplotlib (Debian) "
             "and run with /usr/bin/python3")

WIDTH_IN, HEIGHT_IN, DPI = 8, 5, 100  # 800 x 500 pixels


def fail(msg, status=1):
    nmfiles.fail("plot_run", msg, status)


def open_run(path):
    return nmfiles.open_nanomoe(path, "nanomoe-run", "plot_run")


def read(f, path, name):
    if name not in f:
        fail(f"'{path}': missing dataset /{name}")
    return f[name][...]


def row_edges(steps, interval):
    """Edges of the rows on the step axis: row r covers (steps[r-1], steps[r]]."""
    s = steps.astype(np.float64)
    first = max(0.0, s[0] - max(interval, 1)) if len(s) else 0.0
    edges = np.concatenate([[first], s])
    if np.all(np.diff(edges) > 0):
        return edges, "step"
    return np.arange(len(s) + 1, dtype=np.float64), "row"


def new_fig():
    return plt.figure(figsize=(WIDTH_IN, HEIGHT_IN), dpi=DPI)


def finish_lines(fig, ax, xlabel, ylabel, title, outdir, name, written):
    """Labels, grid and legend of a line plot, then save it."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save(fig, outdir, name, written)


def save(fig, outdir, name, written):
    path = os.path.join(outdir, name)
    fig.savefig(path, dpi=DPI)  # no bbox_inches='tight': it would change the pixel size
    plt.close(fig)
    written.append(path)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="the run's statistics file (out_dir/run.h5)")
    ap.add_argument("-o", "--outdir", required=True, metavar="DIR", help="directory for the PNG files (created if missing)")
    args = ap.parse_args()
    f = open_run(args.run)
    p = args.run
    try:
        L, E = int(f.attrs["n_layers"]), int(f.attrs["n_experts"])
    except KeyError as e:
        fail(f"'{p}': missing root attribute {e}")
    interval = int(f.attrs.get("stats_interval", 1))
    mstep = read(f, p, "metrics/step")
    rstep = read(f, p, "routing/step")
    if len(mstep) == 0 or len(rstep) == 0:
        fail(f"'{p}' has no rows yet (nothing to plot)")
    loss, ce, val = read(f, p, "metrics/loss"), read(f, p, "metrics/ce"), read(f, p, "metrics/val_loss")
    blocks = []
    for i in range(L):
        b = f"routing/blocks/{i}/"
        blocks.append({k: read(f, p, b + k) for k in ("tokens_per_expert", "router_entropy", "dropped", "tokens_per_rank")})
    f.close()
    try:
        os.makedirs(args.outdir, exist_ok=True)
    except OSError as e:
        fail(f"cannot create directory '{args.outdir}': {e}")
    written = []
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]

    # losses
    fig = new_fig()
    ax = fig.add_subplot(111)
    ax.plot(mstep, loss, ".-", label="train loss (interval mean)")
    ax.plot(mstep, ce, ".--", label="train CE (interval mean)", alpha=0.7)
    ok = np.isfinite(val)
    if ok.any():
        ax.plot(mstep[ok], val[ok], "o-", label="validation loss (evaluation in the row's interval)")
    finish_lines(fig, ax, "step", "loss (nats)", f"loss: {p if len(p) <= 70 else '...' + p[-67:]}",
                 args.outdir, "loss.png", written)

    # expert load heatmaps
    edges, ylabel = row_edges(rstep, interval)
    for i, b in enumerate(blocks):
        cnt = b["tokens_per_expert"].astype(np.float64)
        tot = cnt.sum(axis=1, keepdims=True)
        frac = np.divide(cnt, tot, out=np.zeros_like(cnt), where=tot > 0)
        fig = new_fig()
        ax = fig.add_subplot(111)
        vmax = max(2.0 / E, float(frac.max()) if frac.size else 0.0)
        mesh = ax.pcolormesh(np.arange(E + 1) - 0.5, edges, frac, cmap="viridis", vmin=0, vmax=vmax, shading="flat")
        cb = fig.colorbar(mesh, ax=ax)
        cb.set_label(f"fraction of the row's token copies (even = 1/{E} = {1.0 / E:.3f})")
        cb.ax.axhline(1.0 / E, color="w", linewidth=1.5)
        ax.set_xlabel("expert")
        ax.set_xticks(range(E) if E <= 32 else np.linspace(0, E - 1, 9).astype(int))
        ax.set_ylabel(ylabel)
        ax.invert_yaxis()
        ax.set_title(f"layer {i}: expert load over training")
        fig.tight_layout()
        save(fig, args.outdir, f"expert_load_L{i}.png", written)

    # router entropy
    fig = new_fig()
    ax = fig.add_subplot(111)
    for i, b in enumerate(blocks):
        ax.plot(rstep, b["router_entropy"], ".-", label=f"layer {i}", color=colors[i % len(colors)])
    ax.axhline(np.log(E), color="k", linestyle=":", label=f"ln(E) = ln {E} = {np.log(E):.3f} (uniform)")
    finish_lines(fig, ax, "step", "mean router entropy (nats)", "router entropy (full softmax, mean per token)",
                 args.outdir, "router_entropy.png", written)

    # dropped copies
    fig = new_fig()
    ax = fig.add_subplot(111)
    for i, b in enumerate(blocks):
        ax.plot(rstep, b["dropped"], ".-", label=f"layer {i}", color=colors[i % len(colors)])
    total = int(sum(int(b["dropped"].sum()) for b in blocks))
    ax.set_ylim(bottom=0, top=None if total > 0 else 1)
    finish_lines(fig, ax, "step", "token copies dropped in the row's interval",
                 f"copies dropped by the capacity limit ({total} in all)", args.outdir, "dropped.png", written)

    # all-to-all imbalance across ranks
    fig = new_fig()
    ax = fig.add_subplot(111)
    P = 0
    for i, b in enumerate(blocks):
        tpr = b["tokens_per_rank"].astype(np.float64)
        if tpr.ndim != 2:
            fail(f"'{p}': /routing/blocks/{i}/tokens_per_rank has {tpr.ndim} dimensions, expected 2")
        P = max(P, tpr.shape[1])
        ratio = np.full(tpr.shape[0], np.nan)
        for r, row in enumerate(tpr):
            nz = np.nonzero(row)[0]
            if len(nz):
                live = row[: nz[-1] + 1]
                ratio[r] = live.max() / live.mean()
        ax.plot(rstep, ratio, ".-", label=f"layer {i}", color=colors[i % len(colors)])
    ax.axhline(1.0, color="k", linestyle=":", label="1 = even")
    finish_lines(fig, ax, "step", "max / mean over ranks",
                 f"all-to-all imbalance: rows received per rank ({P} rank column(s))"
                 + (" -- 1 rank: flat at 1" if P == 1 else ""), args.outdir, "rank_imbalance.png", written)

    for w in written:
        print(w)
    return 0


if __name__ == "__main__":
    sys.exit(main())
