#!/usr/bin/python3
"""Checks that a nanomoe checkpoint opens in h5py and h5dump with the documented
schema (README.md, "Checkpoint schema"): names, shapes, dtypes and attributes."""
import subprocess
import sys

import h5py
import numpy as np


def main(path):
    failures = []

    def check(cond, msg):
        if not cond:
            failures.append(msg)

    with h5py.File(path, "r") as f:
        a = f.attrs
        fmt = a["format"]
        fmt = fmt.decode() if isinstance(fmt, bytes) else fmt
        check(fmt == "nanomoe-checkpoint", f"format attribute {fmt!r}")
        check(int(a["format_version"]) == 1, "format_version")
        check(int(a["step"]) > 0 and int(a["tokens_seen"]) > 0, "step / tokens_seen")
        cfg = {k: v for k, v in f["config"].attrs.items()}
        for k in ["d_model", "n_layers", "n_heads", "d_ff", "n_experts", "top_k", "block_size", "vocab_size",
                  "dropout_rate", "aux_loss_coeff", "learning_rate", "weight_decay", "batch_size", "max_iters",
                  "eval_interval", "eval_iters", "seed", "data", "out_dir", "log_interval", "ckpt_interval"]:
            check(k in cfg, f"/config lacks {k}")
        C, L, E, F = int(cfg["d_model"]), int(cfg["n_layers"]), int(cfg["n_experts"]), int(cfg["d_ff"])
        V, T = int(cfg["vocab_size"]), int(cfg["block_size"])
        vocab = f["vocab"]
        check(vocab.dtype == np.uint8 and vocab.shape == (V,), f"/vocab {vocab.dtype} {vocab.shape}")
        check(np.all(np.diff(vocab[...].astype(int)) > 0), "/vocab not ascending")
        expect = {"embed/tokens": (V, C), "embed/positions": (T, C), "ln_f/scale": (C,), "ln_f/bias": (C,),
                  "head/kernel": (C, V), "head/bias": (V,)}
        for i in range(L):
            b = f"blocks/{i}/"
            expect.update({b + "ln1/scale": (C,), b + "ln1/bias": (C,), b + "attn/qkv/kernel": (C, 3 * C),
                           b + "attn/qkv/bias": (3 * C,), b + "attn/out/kernel": (C, C), b + "attn/out/bias": (C,),
                           b + "ln2/scale": (C,), b + "ln2/bias": (C,), b + "router/kernel": (C, E),
                           b + "experts/fc1/kernel": (E, C, F), b + "experts/fc1/bias": (E, F),
                           b + "experts/fc2/kernel": (E, F, C), b + "experts/fc2/bias": (E, C)})
        for tree in ["params", "optimizer/m", "optimizer/v"]:
            found = set()
            f[tree].visititems(lambda n, o: found.add(n) if isinstance(o, h5py.Dataset) else None)
            check(found == set(expect), f"/{tree} datasets differ: extra {sorted(found - set(expect))}, "
                                        f"missing {sorted(set(expect) - found)}")
            for name, shape in expect.items():
                if name in found:
                    d = f[tree][name]
                    check(d.shape == shape, f"/{tree}/{name} shape {d.shape}, expected {shape}")
                    check(d.dtype == np.float32, f"/{tree}/{name} dtype {d.dtype}")
                    check(np.all(np.isfinite(d[...])), f"/{tree}/{name} not finite")
        check(int(f["optimizer"].attrs["step"]) == int(a["step"]), "/optimizer step attribute")
        check(np.all(f["params/blocks/0/ln1/scale"][...] != 0), "ln1 scale zero")

    out = subprocess.run(["h5dump", "-H", path], capture_output=True, text=True)
    check(out.returncode == 0, f"h5dump failed: {out.stderr}")
    check('DATASET "kernel"' in out.stdout and 'GROUP "experts"' in out.stdout, "h5dump header lacks the tree")

    for m in failures:
        print("FAIL", m)
    print(f"check_schema: {path}: {'ok' if not failures else str(len(failures)) + ' failures'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
