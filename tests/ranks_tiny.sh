#!/usr/bin/env bash
# Data-parallel training gives the same run at any rank count: 30 steps of
# configs/tiny.ini (dropout on) on 1 and 2 ranks. Data and dropout masks do not
# depend on the rank count, so the first steps agree to the printed digits;
# afterwards gradients summed in another order (per-rank products, then the
# all-reduce) drift apart by float rounding, which a flipped top-k choice can
# amplify: within 1e-3 relative over 30 steps. Uses its own text.
# usage: ranks_tiny.sh NANOMOE MPIEXEC REPO
set -u
bin=$1 mpiexec=$2 repo=$3
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail=0
export OMP_NUM_THREADS=1 OMPI_MCA_pml=${OMPI_MCA_pml:-ob1}
# a deterministic text of ~60 KB from a word list
awk 'BEGIN { srand(7); split("the king and queen of a fair night shall speak my lord with love to thee we are not what good sir come hither death is sweet but time war", w, " ");
  for (i = 0; i < 9000; i++) { printf "%s%s", w[int(rand() * 31) + 1], (i % 11 == 10) ? ".\n" : " " } }' >"$work/text.txt"
for p in 1 2; do
  "$mpiexec" -n $p --oversubscribe "$bin" train "$repo/configs/tiny.ini" data="$work/text.txt" out_dir="$work/r$p" \
    max_iters=30 log_interval=1 eval_interval=0 >"$work/out$p.txt" 2>&1 || { cat "$work/out$p.txt"; echo "not ok - $p ranks failed"; exit 1; }
done
awk -F, 'NR == FNR { if ($1 == "train") a[$2] = $3; next }
         $1 == "train" { n++; d = a[$2] - $3; if (d < 0) d = -d; r = d / a[$2]; if (r > worst) worst = r
                         if ($2 <= 5 && r > early) early = r }
         END { printf "compared %d steps, worst relative loss difference %.3g (steps 1-5: %.3g)\n", n, worst, early
               exit !(n == 30 && worst <= 1e-3 && early <= 1e-6) }' \
  "$work/r1/metrics.csv" "$work/r2/metrics.csv" && echo "ok - 1 and 2 ranks log the same losses" || { echo "not ok - losses differ"; fail=1; }
e1=$("$bin" eval "$work/r1/ckpt_00000030.h5" | awk '{print $6}')
e2=$("$bin" eval "$work/r2/ckpt_00000030.h5" | awk '{print $6}')
awk -v a="$e1" -v b="$e2" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(d <= 1e-3 * a) }' \
  && echo "ok - final checkpoints eval alike ($e1, $e2)" || { echo "not ok - eval $e1 vs $e2"; fail=1; }
exit $fail
