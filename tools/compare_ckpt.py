#!/usr/bin/python3
"""Compare two nanomoe checkpoints tensor by tensor.

Prints, for every tensor under /params (and /optimizer with --optimizer), the
largest absolute difference and the largest difference relative to the
tensor's largest magnitude, then the worst of each. Checkpoints are
whole-model tensors, so files written by any rank counts compare directly.

Exit status: 0 if every tensor is within --tol (relative, default: no limit),
1 if one is not or the trees differ, 2 on a file that is not a nanomoe
checkpoint.
"""
import argparse
import sys

import nmfiles

try:
    import h5py
    import numpy as np
except ImportError as e:  # pragma: no cover
    sys.exit(f"compare_ckpt: {e}: install python3-h5py and python3-numpy (Debian) and run with /usr/bin/python3")


def open_ckpt(path):
    return nmfiles.open_nanomoe(path, "nanomoe-checkpoint", "compare_ckpt")


def tensors(group):
    out = {}
    group.visititems(lambda name, obj: out.__setitem__(name, obj) if isinstance(obj, h5py.Dataset) else None)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a", help="first checkpoint (.h5)")
    ap.add_argument("b", help="second checkpoint (.h5)")
    ap.add_argument("--tol", type=float, default=None, help="fail (exit 1) if a tensor's relative difference exceeds this")
    ap.add_argument("--optimizer", action="store_true", help="also compare the AdamW moments under /optimizer")
    ap.add_argument("--quiet", action="store_true", help="print only the summary line")
    args = ap.parse_args()
    fa, fb = open_ckpt(args.a), open_ckpt(args.b)
    trees = ["params"] + (["optimizer/m", "optimizer/v"] if args.optimizer else [])
    worst_abs = worst_rel = 0.0
    failed = False
    n = 0
    for tree in trees:
        if tree not in fa or tree not in fb:
            print(f"/{tree}: missing in {'the first' if tree not in fa else 'the second'} file")
            failed = True
            continue
        ta, tb = tensors(fa[tree]), tensors(fb[tree])
        for name in sorted(set(ta) | set(tb)):
            if name not in ta or name not in tb:
                print(f"/{tree}/{name}: only in {'the second' if name not in ta else 'the first'} file")
                failed = True
                continue
            x, y = ta[name][...].astype(np.float64), tb[name][...].astype(np.float64)
            if x.shape != y.shape:
                print(f"/{tree}/{name}: shapes differ {x.shape} vs {y.shape}")
                failed = True
                continue
            d = float(np.max(np.abs(x - y))) if x.size else 0.0
            scale = float(max(np.max(np.abs(x)), np.max(np.abs(y)))) if x.size else 0.0
            rel = d / scale if scale > 0 else (0.0 if d == 0 else float("inf"))
            worst_abs, worst_rel = max(worst_abs, d), max(worst_rel, rel)
            bad = args.tol is not None and rel > args.tol
            failed |= bad
            n += 1
            if not args.quiet or bad:
                print(f"/{tree}/{name:34s} max abs {d:.3e}  max rel {rel:.3e}{'  > tol' if bad else ''}")
    print(f"compared {n} tensors: worst abs {worst_abs:.3e}, worst rel {worst_rel:.3e}"
          + (f" (tol {args.tol:g}: {'FAIL' if failed else 'ok'})" if args.tol is not None else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
