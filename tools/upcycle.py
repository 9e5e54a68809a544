#!/usr/bin/python3
"""Grow a nanomoe checkpoint to more experts per MoE layer ("upcycling").

N must be a multiple m = N / E of the checkpoint's expert count E. In every
layer, the copies of expert e are the experts e*m .. e*m+m-1 (so expert e' of
the new layer is a copy of old expert e'//m):

  experts/fc1/kernel, fc1/bias, fc2/kernel, fc2/bias  [E, ...] -> [N, ...],
      each expert repeated m times consecutively;
  router/kernel  [C, E] -> [C, N], each column repeated m times consecutively.

Every copy (all m of them, the first included) gets Gaussian noise of standard
deviation S times the standard deviation of the whole original tensor (--noise,
default 0.01; S = 0 gives exact copies; --seed makes it reproducible). The
AdamW moments /optimizer/m and /optimizer/v of these five tensors per layer are
zeroed; every other moment and the /optimizer step attribute t are kept. (So
AdamW's bias correction sees zero moments at step t: with b1=0.9, b2=0.999 the
first update of a grown element is (1-b1)/(1-b1^(t+1)) / sqrt((1-b2)/(1-b2^(t+1)))
times the learning rate, e.g. 0.77 at t=60, tending to 3.16 for large t.)
/config n_experts becomes N and top_k becomes K (--top-k, default: kept);
everything else (format, format_version, step, tokens_seen, /vocab, every other
/config key, attribute types) is copied unchanged. The output is written to
OUT.h5.tmp and renamed at the end; the input is never overwritten.

What happens to the model's function: with --noise 0 and --top-k m*K (K the
checkpoint's top_k), the m copies of each original expert have equal router
logits, so top-(m*K) selects exactly all copies of the K experts the original
model selected; the gates are a softmax over the selected logits, so each copy
gets 1/m of its original's gate and the layer output is unchanged. The aux
loss is unchanged too (the top-1 fraction f goes to the first copy, the mean
router probability P is split m ways, and N * sum f*P = E * sum f*P). So CE,
aux and loss stay the same up to float rounding. With top_k kept (K < m*K), a
token picks K of the N experts; for K <= m those are only copies of its best
original expert (ties go to the lower index), so it loses its other experts:
the model's function (and loss) changes until training recovers. Noise S > 0
changes the function slightly (by about S) and breaks the ties between copies
from the start; with noise 0 the copies start identical and only the aux loss
(whose top-1 fraction counts the first copy) pulls their router columns apart.

Continue training with the new sizes on the command line, e.g.
  nanomoe train CONFIG resume=OUT.h5 n_experts=N top_k=K
(resume checks d_model n_layers n_heads d_ff n_experts top_k block_size
vocab_size layer_norm_eps against the checkpoint's /config).

Exit status: 0 on success, 1 on a bad argument or a checkpoint that lacks an
expected tensor, 2 on a file that is not a nanomoe checkpoint.
"""
import argparse
import os
import re
import sys

import nmfiles

try:
    import h5py
    import numpy as np
except ImportError as e:  # pragma: no cover
    sys.exit(f"upcycle: {e}: install python3-h5py and python3-numpy (Debian) and run with /usr/bin/python3")

EXPERT_TENSORS = ["experts/fc1/kernel", "experts/fc1/bias", "experts/fc2/kernel", "experts/fc2/bias"]
ROUTER = "router/kernel"
GROWN = re.compile(r"^blocks/(\d+)/(experts/fc[12]/(kernel|bias)|router/kernel)$")


def fail(msg, status=1):
    nmfiles.fail("upcycle", msg, status)


text = nmfiles.text


def open_ckpt(path):
    return nmfiles.open_nanomoe(path, "nanomoe-checkpoint", "upcycle")


def copy_attrs(src, dst):
    """Copies every attribute keeping its stored HDF5 type (int64, float64, variable-length UTF-8 string)."""
    for name in src.attrs:
        aid = src.attrs.get_id(name)
        dst.attrs.create(name, src.attrs[name], shape=aid.shape, dtype=aid.dtype)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ckpt", help="input checkpoint (.h5), never modified")
    ap.add_argument("--experts", type=int, required=True, metavar="N", help="experts per layer in the output (a multiple of the current count)")
    ap.add_argument("-o", "--output", required=True, metavar="OUT.h5", help="output checkpoint")
    ap.add_argument("--top-k", type=int, default=None, metavar="K", help="top_k of the output (default: the checkpoint's; must be <= N)")
    ap.add_argument("--noise", type=float, default=0.01, metavar="S", help="noise std relative to each tensor's std (default 0.01; 0 = exact copies)")
    ap.add_argument("--seed", type=int, default=0, metavar="X", help="seed of the noise (default 0)")
    args = ap.parse_args()

    fin = open_ckpt(args.ckpt)
    cfg = fin["config"].attrs
    for k in ("n_experts", "top_k", "n_layers"):
        if k not in cfg:
            fail(f"'{args.ckpt}': /config lacks {k}")
    E, K, L = int(cfg["n_experts"]), int(cfg["top_k"]), int(cfg["n_layers"])
    N = args.experts
    if N < E or N % E != 0:
        fail(f"--experts {N} is not a multiple of the checkpoint's n_experts={E} (use {E}, {2 * E}, {3 * E}, ...)")
    m = N // E
    K2 = K if args.top_k is None else args.top_k
    if not 1 <= K2 <= N:
        fail(f"--top-k {K2} must be between 1 and --experts {N}")
    if not (args.noise >= 0 and np.isfinite(args.noise)):
        fail(f"--noise {args.noise} must be a finite number >= 0")
    out = args.output
    if os.path.exists(out) and os.path.samefile(out, args.ckpt):
        fail(f"refusing to overwrite the input '{args.ckpt}': choose another -o")

    # every grown tensor must be there with the shape /config implies
    for tree in ("params", "optimizer/m", "optimizer/v"):
        for i in range(L):
            for t in EXPERT_TENSORS + [ROUTER]:
                name = f"{tree}/blocks/{i}/{t}"
                if name not in fin or not isinstance(fin[name], h5py.Dataset):
                    fail(f"'{args.ckpt}': missing dataset /{name}")
                shape = fin[name].shape
                axis = 1 if t == ROUTER else 0
                if len(shape) <= axis or shape[axis] != E:
                    fail(f"'{args.ckpt}': /{name} has shape {shape}, expected {E} experts along axis {axis}")

    rng = np.random.default_rng(args.seed)

    def grow(rel, ds, zero):
        axis = 1 if rel.endswith(ROUTER) else 0
        x = ds[...]
        shape = list(x.shape)
        shape[axis] *= m
        if zero:
            return np.zeros(shape, dtype=x.dtype)
        y = np.repeat(x, m, axis=axis).astype(np.float64)
        if args.noise > 0 and x.size:
            y += rng.standard_normal(y.shape) * (args.noise * float(np.std(x.astype(np.float64))))
        return y.astype(x.dtype)

    def walk(src, dst, prefix, zero):
        copy_attrs(src, dst)
        for name in src:  # alphabetical: a fixed order of noise draws
            obj, rel = src[name], f"{prefix}{name}"
            if isinstance(obj, h5py.Group):
                walk(obj, dst.create_group(name), rel + "/", zero)
            elif GROWN.match(rel):
                d = dst.create_dataset(name, data=grow(rel, obj, zero))
                copy_attrs(obj, d)
            else:
                src.copy(obj, dst, name=name)

    tmp = out + ".tmp"
    try:
        with h5py.File(tmp, "w") as fout:
            copy_attrs(fin, fout)
            for name in fin:
                obj = fin[name]
                if name == "params":
                    walk(obj, fout.create_group(name), "", False)
                elif name == "optimizer":
                    g = fout.create_group(name)
                    copy_attrs(obj, g)
                    for sub in obj:
                        if sub in ("m", "v") and isinstance(obj[sub], h5py.Group):
                            walk(obj[sub], g.create_group(sub), "", True)
                        else:
                            obj.copy(obj[sub], g, name=sub)
                else:
                    fin.copy(obj, fout, name=name)
            c = fout["config"].attrs
            c.modify("n_experts", N)  # modify keeps the stored type (int64)
            c.modify("top_k", K2)
        os.replace(tmp, out)
    except BaseException as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(e, OSError):
            fail(f"cannot write '{out}': {e}")
        raise
    fin.close()
    print(f"wrote {out}: {L} layer(s), {E} -> {N} experts (copies of expert e are e*{m} .. e*{m}+{m - 1}), "
          f"top_k {K} -> {K2}, noise {args.noise:g} x tensor std (seed {args.seed}); "
          f"AdamW moments of the expert and router tensors zeroed")
    if args.noise == 0 and K2 == m * K:
        print(f"noise 0 and top_k = {m} x {K}: the model computes the same function (up to float rounding)")
    elif K2 != m * K:
        print(f"top_k {K2} != {m} x {K}: the model's function changes (top_k = {m * K} would keep it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
