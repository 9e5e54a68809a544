#!/usr/bin/python3
"""Report which characters each expert of a nanomoe run specialises in.

Reads a run's statistics file (run.h5, any rank count). The basis is the
cumulative /routing/blocks/<i>/token_expert [V, E]: how often each vocabulary
id chose each expert first (top-1). For every layer it prints a table with one
row per expert:

  first    the expert's share of all first choices in the run
  last     its share of the token copies (all top-k slots) in the last R rows
  flag     DEAD       no first choices and no token copies in the last R rows
                      (--last, default 1 row)
           OVERLOADED share of first choices > 2 x the even share 1/E
  special  the characters that specialise in this expert: ranked by the
           fraction of the character's first choices that went to this
           expert (only characters with >= M first choices in all, --min-count,
           default 10), shown as fraction (count of the character)
  frequent the expert's most frequent characters: ranked by the fraction of
           the expert's first choices that were this character

Character names come from the run file's /vocab, or from --vocab CKPT's /vocab
(a checkpoint of the run; its vocabulary size must match). Characters are
shown as Python literals ('e', ' ', '\\n'; bytes >= 0x80 as '\\xNN').

It also saves a heatmap PNG (-o, default routing_report.png next to the run
file): one subplot per layer, experts on the vertical axis, characters in
vocabulary order on the horizontal axis, colour = the fraction of the
character's first choices that went to the expert (each column sums to 1).
Its size is 1000 x (100 + 250 * n_layers) pixels (10 x (1 + 2.5 * n_layers)
inches at 100 dpi).

Exit status: 0 on success, 1 on a run without rows, missing datasets or a
vocabulary that does not fit, 2 on a file that is not a nanomoe run file (or
a --vocab file that is not a nanomoe checkpoint).
"""
import argparse
import os
import signal
import sys

import nmfiles

try:
    import h5py
    import numpy as np
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError as e:  # pragma: no cover
    sys.exit(f"routing_report: {e}: install python3-h5py, python3-numpy and python3-matplotlib (Debian) "
             "and run with /usr/bin/python3")

DPI = 100


def fail(msg, status=1):
    nmfiles.fail("routing_report", msg, status)


def open_h5(path, want):
    return nmfiles.open_nanomoe(path, want, "routing_report")


def char_name(b):
    """A Python literal for a byte: 'e', ' ', '\\n'; bytes >= 0x80 (parts of UTF-8 sequences) as '\\xNN'."""
    return repr(chr(b)) if b < 0x80 else f"'\\x{b:02x}'"


def tick_label(b):
    """A short label for plots: the character, SP for a space, escapes for the rest."""
    if b == 0x20:
        return "SP"
    if 0x20 < b < 0x7F:
        return "\\$" if b == 0x24 else chr(b)
    return {0x0A: "\\n", 0x09: "\\t", 0x0D: "\\r"}.get(b, f"x{b:02x}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="the run's statistics file (out_dir/run.h5)")
    ap.add_argument("--vocab", metavar="CKPT", help="take character names from this checkpoint's /vocab")
    ap.add_argument("-o", "--output", metavar="PNG", help="heatmap file (default: routing_report.png next to the run file)")
    ap.add_argument("--top", type=int, default=5, metavar="N", help="characters listed per expert and ranking (default 5)")
    ap.add_argument("--min-count", type=int, default=10, metavar="M",
                    help="characters with fewer first choices in all are left out of the specialisation ranking (default 10)")
    ap.add_argument("--last", type=int, default=1, metavar="R", help="rows at the end used for the dead-expert test and the last share (default 1)")
    args = ap.parse_args()
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # quiet when piped into head
    if args.top < 1 or args.last < 1 or args.min_count < 0:
        fail("--top and --last must be >= 1, --min-count >= 0")

    p = args.run
    f = open_h5(p, "nanomoe-run")
    try:
        L, E, V = int(f.attrs["n_layers"]), int(f.attrs["n_experts"]), int(f.attrs["vocab_size"])
    except KeyError as e:
        fail(f"'{p}': missing root attribute {e}")
    if "routing/step" not in f:
        fail(f"'{p}': missing dataset /routing/step")
    steps = f["routing/step"][...]
    if len(steps) == 0:
        fail(f"'{p}' has no rows yet (nothing to report)")
    run_vocab = f["vocab"][...] if "vocab" in f else None
    if args.vocab:
        c = open_h5(args.vocab, "nanomoe-checkpoint")
        if "vocab" not in c:
            fail(f"'{args.vocab}': missing dataset /vocab")
        vocab = c["vocab"][...]
        c.close()
        if len(vocab) != V:
            fail(f"--vocab '{args.vocab}' has {len(vocab)} characters but the run file '{p}' has vocab_size={V}")
        if run_vocab is not None and not np.array_equal(vocab, run_vocab):
            sys.stderr.write(f"routing_report: warning: the vocabulary of '{args.vocab}' differs from the run file's; "
                             "using the checkpoint's as asked\n")
        source = f"checkpoint {args.vocab}"
    elif run_vocab is not None:
        vocab, source = run_vocab, "the run file"
    else:
        fail(f"'{p}' has no /vocab: pass --vocab CKPT")
    if len(vocab) != V:
        fail(f"'{p}': /vocab has {len(vocab)} entries but vocab_size={V}")
    vocab = [int(b) for b in vocab]

    layers = []
    for i in range(L):
        b = f"routing/blocks/{i}/"
        for k in ("token_expert", "tokens_per_expert", "top1_per_expert"):
            if b + k not in f:
                fail(f"'{p}': missing dataset /{b}{k}")
        te = f[b + "token_expert"][...].astype(np.float64)
        if te.shape != (V, E):
            fail(f"'{p}': /{b}token_expert has shape {te.shape}, expected ({V}, {E})")
        layers.append((te, f[b + "tokens_per_expert"][...].astype(np.float64), f[b + "top1_per_expert"][...].astype(np.float64)))
    f.close()

    R = min(args.last, len(steps))
    first_step = int(steps[-R - 1]) + 1 if len(steps) > R else None
    span = f"steps {first_step}..{int(steps[-1])}" if first_step is not None else f"steps up to {int(steps[-1])}"
    even = 1.0 / E
    print(f"routing report: {p} ({L} layer(s), {E} experts, {V} characters named from {source}; "
          f"{len(steps)} row(s) up to step {int(steps[-1])})")
    print("columns: first = the expert's share of all first (top-1) choices in the run (cumulative token_expert);")
    print(f"  last = its share of the token copies (all top-k slots) in the last {R} row(s) ({span});")
    print(f"  flag: DEAD = no first choices and no token copies in the last {R} row(s); "
          f"OVERLOADED = first-choice share > 2 x even share (2/{E} = {2 * even:.1%});")
    print("  special = characters ranked by the fraction of THE CHARACTER's first choices that went to this expert,")
    print(f"    as fraction (character's count of first choices; characters with >= {args.min_count} only);")
    print("  frequent = characters ranked by the fraction of THE EXPERT's first choices that were this character.")
    frac_all = []
    n_dead = n_over = 0
    for i, (te, cnt, top1) in enumerate(layers):
        total = te.sum()
        per_char = te.sum(axis=1)  # first choices of each character, all experts
        per_exp = te.sum(axis=0)
        frac = np.divide(te, per_char[:, None], out=np.zeros_like(te), where=per_char[:, None] > 0)
        frac_all.append(frac)
        last_cnt, last_top1 = cnt[-R:].sum(axis=0), top1[-R:].sum(axis=0)
        last_tot = last_cnt.sum()
        print(f"\nlayer {i}: {int(total)} first choices in all, even share 1/{E} = {even:.1%}")
        print(f"  {'expert':>6} {'first':>6} {'last':>6}  {'flag':<10}  special / frequent")
        for e in range(E):
            share = per_exp[e] / total if total > 0 else 0.0
            lshare = last_cnt[e] / last_tot if last_tot > 0 else 0.0
            flags = []
            if last_cnt[e] == 0 and last_top1[e] == 0:
                flags.append("DEAD")
                n_dead += 1
            if share > 2 * even:
                flags.append("OVERLOADED")
                n_over += 1
            ok = np.nonzero(per_char >= max(args.min_count, 1))[0]
            spec = sorted(ok, key=lambda v: (-frac[v, e], v))
            spec = [v for v in spec if te[v, e] > 0][: args.top]
            freq = sorted(range(V), key=lambda v: (-te[v, e], v))
            freq = [v for v in freq if te[v, e] > 0][: args.top]
            s1 = "  ".join(f"{char_name(vocab[v])} {frac[v, e]:.0%} ({int(per_char[v])})" for v in spec) or "-"
            s2 = "  ".join(f"{char_name(vocab[v])} {te[v, e] / per_exp[e]:.0%}" for v in freq) or "-"
            print(f"  {e:>6} {share:>6.1%} {lshare:>6.1%}  {','.join(flags) or '-':<10}  special:  {s1}")
            print(f"  {'':>6} {'':>6} {'':>6}  {'':<10}  frequent: {s2}")
    print(f"\n{n_dead} dead and {n_over} overloaded expert(s) over {L} layer(s)")

    out = args.output or os.path.join(os.path.dirname(os.path.abspath(p)), "routing_report.png")
    fig, axes = plt.subplots(L, 1, figsize=(10, 1 + 2.5 * L), dpi=DPI, squeeze=False, layout="constrained")
    labels = [tick_label(b) for b in vocab]
    mesh = None
    for i, frac in enumerate(frac_all):
        ax = axes[i, 0]
        mesh = ax.imshow(frac.T, aspect="auto", cmap="magma", vmin=0, vmax=1, interpolation="nearest")
        ax.set_yticks(range(E) if E <= 16 else np.linspace(0, E - 1, 9).astype(int))
        ax.set_ylabel("expert")
        ax.set_xticks(range(V))
        ax.set_xticklabels(labels, fontsize=7 if V <= 80 else 5, rotation=90 if V > 100 else 0)
        ax.set_title(f"layer {i}: fraction of each character's first choices per expert", fontsize=10)
    axes[-1, 0].set_xlabel("character (vocabulary order; SP = space)")
    fig.colorbar(mesh, ax=axes[:, 0].tolist(), fraction=0.03, pad=0.01, label="fraction of the character's first choices")
    try:
        fig.savefig(out, dpi=DPI)  # no bbox_inches='tight': it would change the pixel size
    except OSError as e:
        fail(f"cannot write '{out}': {e}")
    plt.close(fig)
    print(f"heatmap: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
