#!/usr/bin/env bash
# Rank-count invariance, by construction, on any x86-64 CPU and OpenBLAS
# kernel. 30 training steps of configs/tiny.ini (dropout on) on 1, 2 and 4
# ranks must give identical losses at every step, bit-identical final
# checkpoints and the same run.h5 -- first with OpenBLAS's own kernel choice,
# then again with every kernel forced through OPENBLAS_CORETYPE that this CPU
# can run (the one place where the tests set that variable, for their own
# commands only). Then a 4-rank checkpoint evaluates to the same line on 1, 2
# and 4 ranks; 3 ranks (no fixed tree, experts replicated) and another --batch
# stay within float tolerance. Uses its own text.
# usage: ranks.sh NANOMOE MPIEXEC REPO
set -u
source "$(dirname "$0")/lib.sh"
bin=$1 mpiexec=$2 repo=$3
py=/usr/bin/python3
nm_test_workdir
export OMP_NUM_THREADS=1 OMPI_MCA_pml=${OMPI_MCA_pml:-ob1}
nm_test_text "$work/text.txt" 7

run() { # run NP OUT [key=value...]
  local np=$1 out=$2
  shift 2
  "$mpiexec" -n "$np" --oversubscribe "$bin" train "$repo/configs/tiny.ini" data="$work/text.txt" out_dir="$work/$out" \
    max_iters=30 log_interval=1 eval_interval=10 eval_iters=2 stats_interval=5 "${extra[@]}" "$@" >"$work/$out.log" 2>&1 \
    || { cat "$work/$out.log"; bad "$np ranks ($out) failed"; return 1; }
}
compare_losses() { # compare_losses A B TOL -> prints the worst relative difference
  awk -F, -v tol="$3" 'NR == FNR { if ($1 == "train") a[$2] = $3; next }
       $1 == "train" { n++; d = a[$2] - $3; if (d < 0) d = -d; r = d / a[$2]; if (r > w) w = r }
       END { printf "%d steps, worst relative loss difference %.3g", n, w; exit !(n == 30 && w <= tol) }' \
    "$work/$1/metrics.csv" "$work/$2/metrics.csv"
}
runh5_same() { # equal but for the run id, timing and the per-rank row counts (their width is the rank count)
  h5diff --exclude-attribute / --exclude-path /metrics/tokens_per_s --exclude-path /routing/blocks/0/tokens_per_rank \
    --exclude-path /routing/blocks/1/tokens_per_rank "$1" "$2" >/dev/null
}

# invariance NAME: 1 vs 2 vs 4 ranks in the current environment
invariance() {
  local name=$1 np msg
  for np in 1 2 4; do run $np "$name$np" || return; done
  for np in 2 4; do
    msg=$(compare_losses "${name}1" "$name$np" 0) && ok "$name: 1 vs $np ranks: losses identical ($msg)" \
      || bad "$name: 1 vs $np ranks: $msg"
    msg=$($py "$repo/tools/compare_ckpt.py" "$work/${name}1/ckpt_00000030.h5" "$work/$name$np/ckpt_00000030.h5" \
      --optimizer --quiet --tol 0) && ok "$name: checkpoints of 1 and $np ranks bit-identical" \
      || bad "$name: checkpoints of 1 and $np ranks differ: $msg"
    runh5_same "$work/${name}1/run.h5" "$work/$name$np/run.h5" && ok "$name: run.h5 of 1 and $np ranks identical" \
      || bad "$name: run.h5 of 1 and $np ranks differs"
  done
}

extra=()
invariance native
# gradient slices of several sequences: the products then run on blocks of
# one slice (4 sequences here) rather than of one sequence
extra=(batch_size=16 grad_chunks=4)
invariance slices4
extra=()
# kernels this CPU can run, from the widest down; each must really be the one in use
flags=$(grep -m1 '^flags' /proc/cpuinfo)
kernels=()
[[ $flags == *" avx2 "* && $flags == *" fma "* ]] && kernels+=(Haswell)
[[ $flags == *" avx "* ]] && kernels+=(Sandybridge)
kernels+=(Prescott)
[ ${#kernels[@]} -ge 2 ] || bad "fewer than two OpenBLAS kernels to force on this CPU: ${kernels[*]}"
for k in "${kernels[@]}"; do
  core=$(OPENBLAS_VERBOSE=2 OPENBLAS_CORETYPE=$k "$bin" --help 2>&1 | grep -o 'Core: [A-Za-z0-9]*')
  [ "$core" = "Core: $k" ] && ok "OPENBLAS_CORETYPE=$k is honoured ($core)" || bad "OPENBLAS_CORETYPE=$k: OpenBLAS reports '$core'"
  OPENBLAS_CORETYPE=$k invariance "$k"
done

# a checkpoint written by 4 ranks, evaluated on 1, 2 and 4 ranks: the same line
ck=$work/native4/ckpt_00000030.h5
ev() { local np=$1; shift; "$mpiexec" -n "$np" --oversubscribe "$bin" eval "$ck" --data "$work/text.txt" "$@" 2>&1; }
ref=$(ev 1 --batch 8)
echo "eval on 1 rank: $ref"
[[ $ref == ce* ]] || bad "eval on 1 rank: $ref"
for np in 2 4; do
  got=$(ev $np --batch 8)
  [ "$got" = "$ref" ] && ok "4-rank checkpoint evaluates to the same line on $np ranks" || bad "eval on $np ranks: $got"
done
# within tolerance: 3 ranks (every rank holds all experts: their rows come in
# other groups) and another --batch (other groups of windows)
within() { # within LINE_A LINE_B: ce, aux and loss within 1e-6 relative
  awk -v a="$1" -v b="$2" 'BEGIN { na = split(a, x, " "); split(b, y, " "); w = 0
    for (i = 2; i <= 6; i += 2) { d = x[i] - y[i]; if (d < 0) d = -d; r = d / x[i]; if (r > w) w = r }
    printf "worst relative difference %.2g", w; exit !(na == 10 && w <= 1e-6) }'
}
got=$(ev 3 --batch 8)
msg=$(within "$ref" "$got") && ok "eval on 3 ranks within tolerance: $msg" || bad "eval on 3 ranks: $got ($msg)"
got=$(ev 2 --batch 3)
msg=$(within "$ref" "$got") && ok "eval with --batch 3 within tolerance of --batch 8: $msg" || bad "eval --batch 3: $got ($msg)"

# 3 ranks: uneven batch slices (3, 3, 2), MPI_Allreduce instead of the tree,
# every expert on every rank (3 does not divide 4): not bit-identical, but
# within float tolerance for the first steps
run 3 r3
grep -q "MPI_Allreduce" "$work/r3.log" && ok "3 ranks report the non-tree reduction" || bad "3 ranks: no MPI_Allreduce notice"
msg=$(awk -F, 'NR == FNR { if ($1 == "train") a[$2] = $3; next }
     $1 == "train" && $2 <= 10 { d = a[$2] - $3; if (d < 0) d = -d; r = d / a[$2]; if (r > w) w = r }
     END { printf "steps 1-10: worst relative difference %.3g", w; exit !(w <= 1e-5) }' "$work/native1/metrics.csv" "$work/r3/metrics.csv") \
  && ok "1 vs 3 ranks: $msg" || bad "1 vs 3 ranks: $msg"
exit $fail
