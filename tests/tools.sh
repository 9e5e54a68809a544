#!/usr/bin/env bash
# The analysis tools (tools/plot_run.py, tools/routing_report.py,
# tools/upcycle.py) on files written by 1 and 2 ranks: a 60-step run of
# configs/tiny.ini on its own generated text on each rank count, then
# - every tool's --help exits 0;
# - plot_run.py writes every documented PNG (real PNGs of 800 x 500 pixels);
# - routing_report.py prints a table naming characters and writes a
#   1000 x (100 + 250 * layers) PNG, also with --vocab CKPT;
# - each tool exits 2 with a message on a text file, on an HDF5 file with
#   another format attribute, and on the other kind of nanomoe file;
# - upcycle.py 4 -> 8 experts: with noise 0 and top_k 2 -> 4 `nanomoe eval`
#   gives the same ce and aux within 1e-5 relative, `nanomoe inspect` says
#   schema ok, and training resumes from it (1 and 2 ranks); with top_k kept
#   the loss changes (the difference is printed); --experts 6 is refused;
#   the grown tensors are exact copies, their AdamW moments zero, everything
#   else (moments, attributes and their types) unchanged.
# usage: tools.sh NANOMOE REPO MPIEXEC
set -u
source "$(dirname "$0")/lib.sh"
bin=$1 repo=$2 mpiexec=${3:-mpiexec}
py=/usr/bin/python3
tools=$repo/tools
nm_test_workdir
export OMP_NUM_THREADS=1 OMPI_MCA_pml=${OMPI_MCA_pml:-ob1}
nm_test_text "$work/text.txt" 7
text=$work/text.txt

train() { # train NP OUT [key=value...]
  local np=$1 out=$2
  shift 2
  "$mpiexec" -n "$np" --oversubscribe "$bin" train "$repo/configs/tiny.ini" data="$text" out_dir="$work/$out" \
    max_iters=60 eval_interval=20 stats_interval=10 "$@" >"$work/$out.log" 2>&1
}
train 1 r1 || { cat "$work/r1.log"; bad "training on 1 rank failed"; exit 1; }
train 2 r2 || { cat "$work/r2.log"; bad "training on 2 ranks failed"; exit 1; }
ckpt1=$work/r1/ckpt_00000060.h5 ckpt2=$work/r2/ckpt_00000060.h5

# pngsize FILE W H: a non-empty PNG (signature, IHDR) of W x H pixels
pngsize() {
  $py - "$@" <<'EOF'
import struct, sys
path, w, h = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
data = open(path, "rb").read()
if len(data) < 33 or data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
    sys.exit(f"{path}: not a PNG ({len(data)} bytes)")
W, H = struct.unpack(">II", data[16:24])
import matplotlib.image
a = matplotlib.image.imread(path)  # decodes the whole image
if (W, H) != (w, h) or a.shape[:2] != (h, w):
    sys.exit(f"{path}: {W} x {H} pixels (decoded {a.shape[1]} x {a.shape[0]}), expected {w} x {h}")
EOF
}

# ---- --help
for t in plot_run routing_report upcycle; do
  out=$($py "$tools/$t.py" --help 2>&1) && echo "$out" | grep -q "usage" && ok "$t.py --help" || bad "$t.py --help: $out"
done
$py "$tools/plot_run.py" --help | grep -q "800 x 500" && ok "plot_run.py --help documents 800 x 500" || bad "plot_run.py --help lacks the size"

# ---- plot_run.py on 1- and 2-rank files
pngs="loss.png expert_load_L0.png expert_load_L1.png router_entropy.png dropped.png rank_imbalance.png"
for r in r1 r2; do
  out=$($py "$tools/plot_run.py" "$work/$r/run.h5" -o "$work/plots_$r/sub" 2>&1) || bad "plot_run.py on $r: $out"
  for p in $pngs; do
    f=$work/plots_$r/sub/$p
    echo "$out" | grep -qx "$f" || bad "plot_run.py on $r did not print $f"
    msg=$(pngsize "$f" 800 500 2>&1) && [ -s "$f" ] || bad "plot_run.py on $r: $p: $msg"
  done
  n=$(ls "$work/plots_$r/sub" | wc -l)
  [ "$n" = 6 ] && ok "plot_run.py on $r (${r#r} rank(s)): 6 PNGs of 800 x 500" || bad "plot_run.py on $r: $n files"
done

# ---- routing_report.py
for r in r1 r2; do
  out=$($py "$tools/routing_report.py" "$work/$r/run.h5" 2>&1)
  st=$?
  if [ $st = 0 ] && echo "$out" | grep -q "special:  '" && echo "$out" | grep -q "frequent: '" \
     && echo "$out" | grep -q "'e'" && echo "$out" | grep -q "OVERLOADED = first-choice share > 2 x even share"; then
    ok "routing_report.py on $r prints the table with characters"
  else
    bad "routing_report.py on $r (exit $st): $out"
  fi
  msg=$(pngsize "$work/$r/routing_report.png" 1000 600 2>&1) && ok "routing_report.py on $r: default PNG next to run.h5, 1000 x 600" \
    || bad "routing_report.py on $r: $msg"
done
echo "$out" | sed -n '/^layer 0/,/^$/p'
out=$($py "$tools/routing_report.py" "$work/r2/run.h5" --vocab "$ckpt2" -o "$work/rr.png" 2>&1) \
  && echo "$out" | grep -q "named from checkpoint" && echo "$out" | grep -q "'\\\\n'" && pngsize "$work/rr.png" 1000 600 \
  && ok "routing_report.py --vocab CKPT -o PNG" || bad "routing_report.py --vocab: $out"

# the flags, on a doctored copy: layer 0 expert 0 without copies or first choices in the last row, expert 3 with most first choices
cp "$work/r1/run.h5" "$work/doctored.h5"
$py - "$work/doctored.h5" <<'EOF'
import sys
import h5py
with h5py.File(sys.argv[1], "r+") as f:
    b = f["routing/blocks/0"]
    for k in ("tokens_per_expert", "top1_per_expert"):
        x = b[k][...]; x[-1, 0] = 0; b[k][...] = x
    te = b["token_expert"][...]; te[:, 3] += 10 * te.sum(axis=1); b["token_expert"][...] = te
EOF
out=$($py "$tools/routing_report.py" "$work/doctored.h5" -o "$work/doctored.png" 2>&1)
echo "$out" | grep -Eq '^ +0 .* DEAD ' && echo "$out" | grep -Eq '^ +3 .* OVERLOADED ' && echo "$out" | grep -q "^1 dead and 1 overloaded" \
  && ok "routing_report.py flags a dead and an overloaded expert" || bad "routing_report.py flags: $out"

# ---- files that are not ours
echo "not an HDF5 file" >"$work/plain.txt"
$py -c 'import h5py, sys; f = h5py.File(sys.argv[1], "w"); f.attrs["format"] = "something-else"; f.create_dataset("x", data=[1])' "$work/other.h5"
$py -c 'import h5py, sys; f = h5py.File(sys.argv[1], "w"); f.create_dataset("x", data=[1])' "$work/noformat.h5"
expect2() { # expect2 NAME PATTERN CMD...: exit status 2 and PATTERN in stderr
  local name=$1 pat=$2
  shift 2
  local err
  err=$("$@" 2>&1 >/dev/null)
  local st=$?
  [ $st = 2 ] && echo "$err" | grep -q -- "$pat" && ok "$name: exit 2: $err" || bad "$name: exit $st: $err"
}
for f in plain.txt other.h5 noformat.h5; do
  pat="not"
  [ $f = plain.txt ] && pat="cannot open"
  expect2 "plot_run.py on $f" "$pat" $py "$tools/plot_run.py" "$work/$f" -o "$work/x"
  expect2 "routing_report.py on $f" "$pat" $py "$tools/routing_report.py" "$work/$f" -o "$work/x.png"
  expect2 "upcycle.py on $f" "$pat" $py "$tools/upcycle.py" "$work/$f" --experts 8 -o "$work/x.h5"
done
expect2 "plot_run.py on a checkpoint" "checkpoint" $py "$tools/plot_run.py" "$ckpt1" -o "$work/x"
expect2 "routing_report.py on a checkpoint" "checkpoint" $py "$tools/routing_report.py" "$ckpt1" -o "$work/x.png"
expect2 "routing_report.py --vocab run.h5" "not a nanomoe checkpoint" $py "$tools/routing_report.py" "$work/r1/run.h5" --vocab "$work/r1/run.h5"
expect2 "upcycle.py on a run.h5" "run statistics file" $py "$tools/upcycle.py" "$work/r1/run.h5" --experts 8 -o "$work/x.h5"
[ ! -e "$work/x" ] && [ ! -e "$work/x.png" ] && [ ! -e "$work/x.h5" ] && ok "nothing written on refused files" || bad "output written for a refused file"

# ---- upcycle.py
evalv() { "$bin" eval "$1" --data "$text" 2>&1; }
for src in 1 2; do
  ck=$work/r$src/ckpt_00000060.h5
  out=$($py "$tools/upcycle.py" "$ck" --experts 8 --top-k 4 --noise 0 -o "$work/up4_$src.h5" 2>&1) || bad "upcycle of the $src-rank checkpoint: $out"
  a=$(evalv "$ck") b=$(evalv "$work/up4_$src.h5")
  msg=$(echo "$a|$b" | awk -F'|' '{ split($1, x, " "); split($2, y, " "); w = 0
      for (i = 2; i <= 6; i += 2) { d = x[i] - y[i]; if (d < 0) d = -d; r = d / (x[i] < 0 ? -x[i] : x[i]); if (r > w) w = r }
      printf "ce %s -> %s, aux %s -> %s, loss %s -> %s, worst relative difference %.2g", x[2], y[2], x[4], y[4], x[6], y[6], w
      exit !(x[1] == "ce" && y[1] == "ce" && w <= 1e-5) }') \
    && ok "upcycle ${src}-rank checkpoint, 4 -> 8 experts, top_k 2 -> 4, noise 0: same function: $msg" \
    || bad "upcycle (noise 0, top_k 4) changes the loss: $msg [$a] [$b]"
done
up4=$work/up4_1.h5
"$bin" inspect "$up4" >"$work/inspect.log" 2>&1 && grep -q "schema: ok" "$work/inspect.log" \
  && ok "nanomoe inspect of the upcycled checkpoint: schema ok" || { cat "$work/inspect.log"; bad "inspect of the upcycled checkpoint"; }

$py "$tools/upcycle.py" "$ckpt1" --experts 8 --noise 0 -o "$work/up2.h5" >/dev/null 2>&1 || bad "upcycle with top_k kept failed"
a=$(evalv "$ckpt1") b=$(evalv "$work/up2.h5")
msg=$(echo "$a|$b" | awk -F'|' '{ split($1, x, " "); split($2, y, " ")
    printf "loss %s -> %s (%+.4g, %+.3g%% relative; ce %s -> %s, aux %s -> %s)", x[6], y[6], y[6] - x[6], 100 * (y[6] - x[6]) / x[6], x[2], y[2], x[4], y[4]
    exit !(y[1] == "ce" && x[6] != y[6]) }') && ok "upcycle with top_k kept (2 of 8 experts) changes the function: $msg" || bad "top_k kept: $msg [$a] [$b]"

# resume training from the upcycled checkpoint, on 1 and 2 ranks
for np in 1 2; do
  "$mpiexec" -n $np --oversubscribe "$bin" train "$repo/configs/tiny.ini" data="$text" out_dir="$work/grown$np" resume="$up4" \
    n_experts=8 top_k=4 max_iters=70 eval_interval=20 stats_interval=10 >"$work/grown$np.log" 2>&1
  st=$?
  if [ $st = 0 ] && grep -q "resuming from .* at step 60" "$work/grown$np.log" && grep -q "^step 70/70" "$work/grown$np.log" \
     && [ -f "$work/grown$np/ckpt_00000070.h5" ]; then
    ok "training resumes from the upcycled checkpoint on $np rank(s): $(grep '^step 70/70' "$work/grown$np.log" | cut -d'|' -f1-4)"
  else
    cat "$work/grown$np.log"
    bad "training from the upcycled checkpoint on $np rank(s) (exit $st)"
  fi
done
out=$($py "$tools/plot_run.py" "$work/grown2/run.h5" -o "$work/plots_grown" 2>&1) && [ "$(echo "$out" | wc -l)" = 6 ] \
  && pngsize "$work/plots_grown/expert_load_L1.png" 800 500 && ok "plot_run.py on the grown run (8 experts, one row)" || bad "plot_run.py on the grown run: $out"

# the contents of the upcycled file
msg=$($py - "$ckpt1" "$up4" <<'EOF'
import sys
import h5py
import numpy as np
a, b = h5py.File(sys.argv[1], "r"), h5py.File(sys.argv[2], "r")
errs = []
def attrs_same(x, y, where, skip=()):
    for k in set(x.attrs) | set(y.attrs):
        if k in skip:
            continue
        if k not in x.attrs or k not in y.attrs:
            errs.append(f"{where}: attribute {k} only in one file"); continue
        tx, ty = x.attrs.get_id(k).get_type(), y.attrs.get_id(k).get_type()
        if not tx.equal(ty) or x.attrs.get_id(k).shape != y.attrs.get_id(k).shape:
            errs.append(f"{where}: attribute {k} type differs")
        if not np.array_equal(np.asarray(x.attrs[k]), np.asarray(y.attrs[k])):
            errs.append(f"{where}: attribute {k} differs: {x.attrs[k]!r} vs {y.attrs[k]!r}")
attrs_same(a, b, "/")
attrs_same(a["config"], b["config"], "/config", skip=("n_experts", "top_k"))
attrs_same(a["optimizer"], b["optimizer"], "/optimizer")
c = b["config"].attrs
if int(c["n_experts"]) != 8 or int(c["top_k"]) != 4 or c.get_id("n_experts").dtype != np.int64 or c.get_id("top_k").dtype != np.int64:
    errs.append(f"/config n_experts={c['n_experts']!r} top_k={c['top_k']!r}")
if not np.array_equal(a["vocab"][...], b["vocab"][...]):
    errs.append("/vocab differs")
names = []
a.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
grown = 0
for n in names:
    x, y = a[n][...], b[n][...]
    parts = n.split("/")
    is_grown = "experts" in parts or n.endswith("router/kernel")
    if not is_grown:
        if x.dtype != y.dtype or not np.array_equal(x, y):
            errs.append(f"/{n} changed")
        continue
    grown += 1
    axis = 1 if n.endswith("router/kernel") else 0
    if y.dtype != x.dtype or y.shape[axis] != 2 * x.shape[axis]:
        errs.append(f"/{n}: {y.dtype} {y.shape} from {x.dtype} {x.shape}")
    elif n.startswith("optimizer/"):
        if np.any(y != 0):
            errs.append(f"/{n}: moments not zero")
    elif not np.array_equal(y, np.repeat(x, 2, axis=axis)):
        errs.append(f"/{n}: not copies e -> 2e, 2e+1")
if grown != 3 * 2 * 5:
    errs.append(f"{grown} grown tensors, expected 30")
if np.all(a["optimizer/m/head/kernel"][...] == 0):
    errs.append("/optimizer/m/head/kernel is zero in the input: the test proves nothing")
print("; ".join(errs) if errs else f"{grown} grown tensors exact copies with zero moments; every other tensor, moment and attribute (with its type) unchanged")
sys.exit(1 if errs else 0)
EOF
) && ok "upcycled contents: $msg" || bad "upcycled contents: $msg"

# noise: copies differ by about S x the tensor's std; the same seed gives the same file
$py "$tools/upcycle.py" "$ckpt1" --experts 8 --noise 0.05 --seed 3 -o "$work/n1.h5" >/dev/null &&
  $py "$tools/upcycle.py" "$ckpt1" --experts 8 --noise 0.05 --seed 3 -o "$work/n2.h5" >/dev/null || bad "upcycle with noise failed"
msg=$($py - "$ckpt1" "$work/n1.h5" "$work/n2.h5" <<'EOF'
import sys
import h5py
import numpy as np
a, b, c = (h5py.File(p, "r") for p in sys.argv[1:])
n = "params/blocks/0/experts/fc1/kernel"
x, y = a[n][...].astype(np.float64), b[n][...].astype(np.float64)
r = (y - np.repeat(x, 2, axis=0)).std() / x.std()
same = all(np.array_equal(b[k][...], c[k][...]) for k in (n, "params/blocks/1/router/kernel"))
print(f"noise std / tensor std = {r:.4f} (asked 0.05), same seed same tensors: {same}")
sys.exit(0 if 0.04 < r < 0.06 and same else 1)
EOF
) && ok "upcycle --noise 0.05: $msg" || bad "upcycle --noise: $msg"

# refused arguments
err=$($py "$tools/upcycle.py" "$ckpt1" --experts 6 -o "$work/six.h5" 2>&1)
st=$?
[ $st != 0 ] && echo "$err" | grep -q -- "6" && echo "$err" | grep -q "n_experts=4" && [ ! -e "$work/six.h5" ] && [ ! -e "$work/six.h5.tmp" ] \
  && ok "--experts 6 refused (exit $st): $err" || bad "--experts 6 (exit $st): $err"
err=$($py "$tools/upcycle.py" "$ckpt1" --experts 8 --top-k 9 -o "$work/k9.h5" 2>&1)
st=$?
[ $st != 0 ] && echo "$err" | grep -q "top-k 9" && ok "--top-k 9 > 8 refused: $err" || bad "--top-k 9 (exit $st): $err"
sum=$(md5sum <"$ckpt1")
err=$($py "$tools/upcycle.py" "$ckpt1" --experts 8 -o "$ckpt1" 2>&1)
st=$?
[ $st != 0 ] && [ "$(md5sum <"$ckpt1")" = "$sum" ] && ok "refuses to overwrite its input: $err" || bad "overwrite of the input (exit $st): $err"
[ -z "$(ls "$work"/*.tmp 2>/dev/null)" ] && ok "no temporary files left" || bad "temporary files left: $(ls "$work"/*.tmp)"
exit $fail
