#!/usr/bin/env bash
# Faults that only some ranks see end the whole job within seconds, with one
# message naming the ranks and the reason, and a non-zero exit. Two ranks are
# started as an MPMD launch (mpiexec -n 1 A : -n 1 B), either with other
# arguments on rank 1 or in another working directory whose files differ:
# relative paths then name other files on each rank, as on two nodes whose
# file systems differ (tests/cluster/faults.sh does the same through real
# per-host mount views). Needs no root. Uses its own text.
# usage: mpmd.sh NANOMOE MPIEXEC REPO
set -u
source "$(dirname "$0")/lib.sh"
bin=$1 mpiexec=$2 repo=$3
py=/usr/bin/python3
nm_test_workdir
export OMP_NUM_THREADS=1 OMPI_MCA_pml=${OMPI_MCA_pml:-ob1}
cfg=$repo/configs/tiny.ini
mkdir -p "$work/A" "$work/B"
nm_test_text "$work/A/text.txt" 5
cp "$work/A/text.txt" "$work/B/text.txt"
common=(data=text.txt out_dir=run log_interval=5 eval_interval=0)

# fault NAME PATTERN -- ARGS_A -- ARGS_B: rank 0 runs `nanomoe ARGS_A` in A,
# rank 1 `nanomoe ARGS_B` in B; both must fail within 60 s with PATTERN
fault() {
  local name=$1 pattern=$2 a=() b=()
  shift 3
  while [ "$1" != -- ]; do a+=("$1"); shift; done
  shift
  b=("$@")
  local t0=$SECONDS
  timeout -k 5 60 "$mpiexec" --oversubscribe -wdir "$work/A" -n 1 "$bin" "${a[@]}" : -wdir "$work/B" -n 1 "$bin" "${b[@]}" \
    >"$work/$name.log" 2>&1
  local rc=$? dt=$((SECONDS - t0))
  if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then bad "$name: hung (killed after 60 s)"; return; fi
  if [ $rc -eq 0 ]; then bad "$name: exited 0"; return; fi
  local msg
  msg=$(grep -m1 "nanomoe: error:" "$work/$name.log")
  if grep -q -- "$pattern" <<<"$msg"; then ok "$name: ends in ${dt} s, exit $rc: ${msg#nanomoe: error: }"
  else bad "$name: message '$msg' (expected '$pattern'); log: $(tail -3 "$work/$name.log")"; fi
  grep -q "^nanomoe: error:" <(grep -v "^nanomoe: error:" "$work/$name.log") && bad "$name: more than one error line"
}

# ---- arguments that differ on one rank
fault config "rank 1 on .*: the configuration differs from rank 0's: d_model=48 here, d_model=32 on rank 0" \
  -- train "$cfg" "${common[@]}" max_iters=5 -- train "$cfg" "${common[@]}" max_iters=5 d_model=48
fault badvalue "rank 1 on .*: config: d_model=abc is not an integer" \
  -- train "$cfg" "${common[@]}" -- train "$cfg" "${common[@]}" d_model=abc
fault options "rank 1 on .*: the set of flags differs from rank 0's: --force=1 here, --force=0 on rank 0" \
  -- train "$cfg" "${common[@]}" -- train "$cfg" "${common[@]}" --force
fault command "rank 1 on .*: the command differs from rank 0's: eval here, train on rank 0" \
  -- train "$cfg" "${common[@]}" -- eval run/ckpt_00000010.h5

# ---- the data differs, or is missing, on one rank
cp "$work/A/text.txt" "$work/B/text.txt" && printf 'x' >>"$work/B/text.txt"
fault data "rank 1 on .*: data 'text.txt' as read here differs from rank 0's: bytes=[0-9]* here" \
  -- train "$cfg" "${common[@]}" -- train "$cfg" "${common[@]}"
rm "$work/B/text.txt"
fault nodata "rank 1 on .*: data: cannot read 'text.txt': No such file or directory" \
  -- train "$cfg" "${common[@]}" -- train "$cfg" "${common[@]}"
cp "$work/A/text.txt" "$work/B/text.txt"

# ---- checkpoints that one rank cannot see, or sees differently
(cd "$work/A" && "$bin" train "$cfg" "${common[@]}" max_iters=10 ckpt_interval=5 >"$work/base.log" 2>&1) || bad "base run failed"
(cd "$work/A" && "$bin" train "$cfg" "${common[@]}" out_dir=other seed=3 max_iters=10 >>"$work/base.log" 2>&1) || bad "other run failed"
fault resume_path "resume=run/ckpt_00000010.h5: rank 1 on .*: cannot read checkpoint 'run/ckpt_00000010.h5': No such file" \
  -- train "$cfg" "${common[@]}" max_iters=15 resume=run/ckpt_00000010.h5 \
  -- train "$cfg" "${common[@]}" max_iters=15 resume=run/ckpt_00000010.h5
mkdir -p "$work/B/run"
fault resume_auto "resume=auto: rank 1 on .*: cannot read checkpoint 'run/ckpt_00000010.h5'" \
  -- train "$cfg" "${common[@]}" max_iters=15 resume=auto -- train "$cfg" "${common[@]}" max_iters=15 resume=auto
fault eval_missing "rank 1 on .*: cannot read checkpoint 'run/ckpt_00000010.h5'" \
  -- eval run/ckpt_00000010.h5 -- eval run/ckpt_00000010.h5
head -c 30000 "$work/A/run/ckpt_00000010.h5" >"$work/B/run/ckpt_00000010.h5"
fault corrupt "resume=auto: rank 1 on .*: cannot open checkpoint 'run/ckpt_00000010.h5': the HDF5 file is truncated or corrupt" \
  -- train "$cfg" "${common[@]}" max_iters=15 resume=auto -- train "$cfg" "${common[@]}" max_iters=15 resume=auto
cp "$work/A/other/ckpt_00000010.h5" "$work/B/run/ckpt_00000010.h5"
fault replaced "rank 1 on .*: checkpoint 'run/ckpt_00000010.h5' as read here differs from rank 0's: run_id=" \
  -- eval run/ckpt_00000010.h5 -- eval run/ckpt_00000010.h5
# the same file, but another run's run.h5 next to it on rank 1
cp "$work/A/run/ckpt_00000010.h5" "$work/B/run/" && cp "$work/A/other/run.h5" "$work/B/run/run.h5"
fault runh5 "rank 1 on .*: 'run/run.h5' as read here differs from rank 0's: " \
  -- train "$cfg" "${common[@]}" max_iters=15 resume=auto -- train "$cfg" "${common[@]}" max_iters=15 resume=auto
# nothing of the above touched rank 0's files
(cd "$work/A" && "$bin" train "$cfg" "${common[@]}" max_iters=15 resume=auto >"$work/after.log" 2>&1) \
  && grep -q "resuming from run/ckpt_00000010.h5 at step 10" "$work/after.log" \
  && ok "rank 0's run continues normally afterwards" || bad "rank 0's run after the faults: $(tail -2 "$work/after.log")"
exit $fail
