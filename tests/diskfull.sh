#!/usr/bin/env bash
# A full disk while writing: on one process (what the library's nm_train_run
# does for a program) a failed checkpoint or run.h5 write ends the run with an
# error naming the file and the HDF5 call, removes the partial .tmp and leaves
# the previous checkpoints valid; on 2 ranks it aborts every rank within
# seconds (a rank that stops making collective calls would hang the others)
# and the previous checkpoints stay valid too. The disk is a small tmpfs
# mounted in a private mount namespace (root: fails, never skips, without it).
# usage: diskfull.sh NANOMOE MPIEXEC REPO
set -u
source "$(dirname "$0")/lib.sh"
bin=$1 mpiexec=$2 repo=$3
if [ -z "${NM_DISKFULL_INSIDE:-}" ]; then
  [ "$(id -u)" -eq 0 ] || { bad "needs root: mounts a small tmpfs in a private mount namespace (unshare -m)"; exit 1; }
  NM_DISKFULL_INSIDE=1 exec unshare --mount --propagation private bash "$0" "$@"
fi
nm_test_workdir
export OMP_NUM_THREADS=1 OMPI_MCA_pml=${OMPI_MCA_pml:-ob1}
nm_test_text "$work/text.txt" 3
disk=$work/disk
mkdir "$disk"
fresh() { # fresh SIZE [FILL_BYTES]: an empty tmpfs of SIZE at $disk, part of it taken by a filler
  mountpoint -q "$disk" && umount "$disk"
  mount -t tmpfs -o size="$1" nm-diskfull "$disk" || { bad "cannot mount a tmpfs"; exit 1; }
  [ -n "${2:-}" ] && head -c "$2" /dev/zero >"$disk/fill"
  mkdir "$disk/run"
}
trap 'mountpoint -q "$disk" && umount "$disk"; rm -rf "$work"' EXIT
run() { # run NP [key=value...]: train into $disk/run; status and seconds in $rc, $dt
  local np=$1 t0=$SECONDS
  shift
  timeout -k 5 120 "$mpiexec" -n "$np" --oversubscribe "$bin" train "$repo/configs/tiny.ini" data="$work/text.txt" \
    out_dir="$disk/run" eval_interval=0 log_interval=1000 "$@" >"$work/out.log" 2>&1
  rc=$? dt=$((SECONDS - t0))
}
valid() { local f; for f in "$@"; do "$bin" inspect "$f" >/dev/null 2>&1 || return 1; done; }

# one checkpoint is 660 kB: the third does not fit in 1.5 MB
fresh 1500k
run 1 max_iters=20 ckpt_interval=2
msg=$(grep "nanomoe: error:" "$work/out.log")
[ $rc -eq 1 ] && [[ $msg == *"cannot write checkpoint '$disk/run/ckpt_00000006.h5.tmp': H5D"*"(the previous checkpoints are untouched)" ]] \
  && ok "1 process, checkpoint on a full disk: exit 1 after $dt s: ${msg#nanomoe: error: }" || bad "1 process: rc $rc: $(tail -3 "$work/out.log")"
[ ! -e "$disk/run/ckpt_00000006.h5.tmp" ] && [ ! -e "$disk/run/ckpt_00000006.h5" ] && ok "the partial .tmp is removed" \
  || bad "left: $(ls "$disk/run" | tr '\n' ' ')"
valid "$disk/run/ckpt_00000002.h5" "$disk/run/ckpt_00000004.h5" && ok "the previous checkpoints are valid" || bad "previous checkpoints damaged"
grep -q "Segmentation fault\|signal" "$work/out.log" && bad "the process crashed on its way out: $(grep -m1 -i 'signal\|fault' "$work/out.log")"

fresh 1500k
run 2 max_iters=20 ckpt_interval=2
msg=$(grep -m1 "nanomoe: rank" "$work/out.log")
[ $rc -ne 0 ] && [ $rc -ne 124 ] && [[ $msg == *"ckpt.c:"*"H5D"*"failed"* ]] \
  && ok "2 ranks, checkpoint on a full disk: every rank aborted after $dt s (exit $rc): ${msg#nanomoe: }" \
  || bad "2 ranks: rc $rc: $(grep -v '^\[' "$work/out.log" | tail -3)"
valid "$disk/run/ckpt_00000002.h5" "$disk/run/ckpt_00000004.h5" && ok "2 ranks: the previous checkpoints are valid" \
  || bad "2 ranks: previous checkpoints damaged"

# run.h5 grows a row a step; the filler leaves it a little room
fresh 400k 250000
run 1 max_iters=3000 stats_interval=1
msg=$(grep "nanomoe: error:" "$work/out.log")
[ $rc -eq 1 ] && [[ $msg == *"cannot write run.h5: H5D"*"(runstats.c:"* ]] \
  && ok "1 process, run.h5 on a full disk: exit 1 after $dt s: ${msg#nanomoe: error: }" || bad "run.h5 full: rc $rc: $(tail -3 "$work/out.log")"
grep -q "Segmentation fault\|signal" "$work/out.log" && bad "the process crashed on its way out (run.h5)"
exit $fail
