#!/usr/bin/env bash
# Faults that one host sees and the other does not, on two simulated hosts
# (cluster.sh) x 2 ranks: ranks 2 and 3 run on nmh2, whose mount view (and
# only nmh2's) is made faulty -- a checkpoint, out_dir, run.h5 or the data
# hidden, truncated or replaced by another run's, out_dir read-only -- and
# finally nmh2 loses power in the middle of training. Every fault must end
# the whole job within seconds with a non-zero exit and one message naming
# ranks 2, 3 on nmh2 and the reason (tests/mpmd.sh does the same on one host
# with MPMD launches); after the node loss the surviving host continues from
# the newest complete checkpoint. Each ok line gives the seconds from launch
# to the end of mpirun. Afterwards nothing of the harness is left. Needs root.
# Uses its own text.
# usage: faults.sh NANOMOE MPIEXEC REPO
set -u
here=$(cd "$(dirname "$0")" && pwd)
source "$here/../lib.sh"
source "$here/cluster.sh"
bin=$1 mpiexec=$2 repo=$3
nm_test_workdir
export OMP_NUM_THREADS=1 NM_CLUSTER_MPIRUN=$mpiexec
cfg=$repo/configs/tiny.ini
mkdir "$work/data"
text=$work/data/text.txt
nm_test_text "$text" 5
common=(data="$text" log_interval=5 eval_interval=0)

cluster_up 2 || { bad "cluster_up 2"; exit 1; }
ids=$(cluster_ns_ids) state=$NM_CLUSTER_DIR
hosts=$(cluster_hosts 2)

# now: seconds since the epoch, with decimals
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# launch LOG TIMEOUT ARGS...: cluster_mpirun ARGS under timeout (a shell
# function cannot be timeout's command: a bash that sources cluster.sh is);
# timeout signals its whole process group, mpirun included
launch() {
  local log=$1 limit=$2
  shift 2
  timeout -k 5 "$limit" bash -c 'source "$0"; cluster_mpirun "$@"' "$here/cluster.sh" "$@" >"$log" 2>&1
}

# nmh2_clean: nmh2 shows the shared file system again (no mount of ours left
# under $work)
nmh2_clean() {
  local left
  left=$(host_run nmh2 findmnt -rn -o TARGET | grep -F "$work")
  [ -z "$left" ] || bad "nmh2's view not restored: still mounted: $left"
}

# sums: the checksums of the files of the run the faults are tried on
sums() { (cd "$run" && md5sum -- *); }

# fault NAME PATTERN NANOMOE-ARGS...: `nanomoe ARGS` on 2 hosts x 2 ranks must
# fail within 30 s (killed after 60 s: a hang) with one error line matching
# PATTERN (grep -E), and leave the files of $run as they were
fault() {
  local name=$1 pattern=$2 t0 rc dt msg changed rows
  shift 2
  t0=$(now)
  launch "$work/$name.log" 60 --host "$hosts" -n 4 "$bin" "$@"
  rc=$? dt=$(since "$t0")
  if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
    bad "$name: hung (killed after $dt s); log: $(tail -5 "$work/$name.log" | paste -sd'|')"
    # timeout has killed the bash between it and mpirun: what is left of the
    # job must not reach into the next case
    host_kill_all nmh1
    host_kill_all nmh2
    return
  fi
  if [ $rc -eq 0 ]; then bad "$name: exited 0 after $dt s; log: $(tail -3 "$work/$name.log" | paste -sd'|')"; return; fi
  msg=$(grep -m1 "^nanomoe: error:" "$work/$name.log")
  if grep -Eq -- "$pattern" <<<"$msg"; then ok "$name: ends in $dt s, exit $rc: ${msg#nanomoe: error: }"
  else bad "$name: after $dt s, exit $rc, message '$msg' (expected '$pattern'); log: $(tail -5 "$work/$name.log" | paste -sd'|')"; fi
  awk -v t="$dt" 'BEGIN { exit !(t > 30) }' && bad "$name: took $dt s (more than 30)"
  [ "$(grep -c "nanomoe: error:" "$work/$name.log")" -le 1 ] ||
    bad "$name: more than one error line: $(grep "nanomoe: error:" "$work/$name.log" | paste -sd'|')"
  changed=$(diff <(echo "$run_sums") <(sums) | awk '$1 == ">" { print $3 }' | paste -sd' ')
  rows=$(grep -c "^train," "$run/metrics.csv")
  [ -z "$changed" ] || bad "$name: the failed job changed $run: $changed (metrics.csv: $run_rows rows before, $rows after)"
  run_sums=$(sums) run_rows=$rows # the next case reports its own changes only
}

got=$(launch "$work/hostname.log" 60 --host "$hosts" -n 4 hostname && sort "$work/hostname.log" | uniq -c | awk '{ printf "%s%s x%d", sep, $2, $1; sep = ", " }')
[ "$got" = "nmh1 x2, nmh2 x2" ] && ok "4 ranks run on two hosts: $got" || { cat "$work/hostname.log"; bad "hostname on 4 ranks: $got"; }

# two runs of 10 steps (1 rank, outside the cluster): run (checkpoints at 5
# and 10) and other (another seed: other run id, other weights)
run=$work/run other=$work/other ck=$work/run/ckpt_00000010.h5
"$bin" train "$cfg" "${common[@]}" out_dir="$run" max_iters=10 ckpt_interval=5 >"$work/base.log" 2>&1 &&
  "$bin" train "$cfg" "${common[@]}" out_dir="$other" seed=3 max_iters=10 >>"$work/base.log" 2>&1 ||
  { cat "$work/base.log"; bad "base runs failed"; exit 1; }
resume=(train "$cfg" "${common[@]}" out_dir="$run" max_iters=15)
run_sums=$(sums) run_rows=$(grep -c "^train," "$run/metrics.csv")
on2='ranks 2, 3 on nmh2: '

# 1. resume=PATH: the checkpoint is missing on nmh2 (its directory hidden)
host_hide nmh2 "$run"
fault resume_path_missing "^nanomoe: error: resume=$ck: ${on2}cannot read checkpoint '$ck': No such file or directory" \
  "${resume[@]}" resume="$ck"
host_restore nmh2 "$run"
nmh2_clean
# ... and the file itself reads as empty there
host_hide nmh2 "$ck"
fault resume_path_empty "^nanomoe: error: resume=$ck: ${on2}checkpoint '$ck' is not an HDF5 file" \
  "${resume[@]}" resume="$ck"
host_restore nmh2 "$ck"
nmh2_clean

# 2. resume=auto: rank 0 lists the checkpoints; nmh2's out_dir looks empty
host_hide nmh2 "$run"
fault resume_auto "^nanomoe: error: resume=auto: ${on2}cannot read checkpoint '$ck': No such file or directory" \
  "${resume[@]}" resume=auto
host_restore nmh2 "$run"
nmh2_clean

# 3. eval of a checkpoint missing on nmh2, and of one that reads empty there
host_hide nmh2 "$run"
fault eval_missing "^nanomoe: error: ${on2}cannot read checkpoint '$ck': No such file or directory" eval "$ck"
host_restore nmh2 "$run"
host_hide nmh2 "$ck"
fault eval_empty "^nanomoe: error: ${on2}checkpoint '$ck' is not an HDF5 file" eval "$ck"
host_restore nmh2 "$ck"
nmh2_clean

# 4. the checkpoint is truncated on nmh2
head -c 30000 "$ck" >"$work/truncated.h5"
host_replace nmh2 "$ck" "$work/truncated.h5"
fault corrupt "^nanomoe: error: resume=auto: ${on2}cannot open checkpoint '$ck': the HDF5 file is truncated or corrupt" \
  "${resume[@]}" resume=auto
host_restore nmh2 "$ck"
nmh2_clean

# 5. nmh2 sees a valid checkpoint of another run under the same name
host_replace nmh2 "$ck" "$other/ckpt_00000010.h5"
fault replaced_eval "^nanomoe: error: ${on2}checkpoint '$ck' as read here differs from rank 0's: run_id=[^ ]+ here, run_id=[^ ]+ on rank 0" \
  eval "$ck"
fault replaced_resume "^nanomoe: error: resume=auto: ${on2}checkpoint '$ck' as read here differs from rank 0's: run_id=[^ ]+ here, run_id=[^ ]+ on rank 0" \
  "${resume[@]}" resume=auto
host_restore nmh2 "$ck"
nmh2_clean

# 6. the checkpoint is the same, but nmh2 sees another run's run.h5
# (resume=auto continues from the newest checkpoint, resume=PATH here from an
# older one)
host_replace nmh2 "$run/run.h5" "$other/run.h5"
fault runh5 "^nanomoe: error: ${on2}'$run/run.h5' as read here differs from rank 0's: " "${resume[@]}" resume=auto
fault runh5_older "^nanomoe: error: ${on2}'$run/run.h5' as read here differs from rank 0's: " \
  "${resume[@]}" resume="$run/ckpt_00000005.h5"
host_restore nmh2 "$run/run.h5"
nmh2_clean

# 7. the data differ slightly on nmh2 (one letter of the last line, in the
# validation split: same length and vocabulary, another content), for
# training and for eval (which reads the checkpoint's data), or are missing
tac "$text" | sed '0,/king/s//kong/' | tac >"$work/text2.txt"
cmp -s "$text" "$work/text2.txt" && bad "text2.txt equals text.txt"
host_replace nmh2 "$text" "$work/text2.txt"
fault data_differs "^nanomoe: error: ${on2}data '$text' as read here differs from rank 0's: content hash=[0-9a-f]+ here, content hash=[0-9a-f]+ on rank 0" \
  train "$cfg" "${common[@]}" out_dir="$work/new_data" max_iters=5
fault eval_data_differs "^nanomoe: error: ${on2}data '$text' as read here differs from rank 0's" eval "$ck"
host_restore nmh2 "$text"
host_hide nmh2 "$work/data"
fault data_missing "^nanomoe: error: ${on2}data: cannot read '$text': No such file or directory" \
  train "$cfg" "${common[@]}" out_dir="$work/new_data" max_iters=5
host_restore nmh2 "$work/data"
nmh2_clean

# 8. a new run whose out_dir is read-only on nmh2: nmh2 sees the parent
# directory as a read-only bind of itself (rank 0 creates out_dir in it; root
# ignores permissions, a read-only mount it cannot)
mkdir "$work/ro"
host_run nmh2 mount --bind "$work/ro" "$work/ro" && host_run nmh2 mount -o remount,ro,bind "$work/ro" &&
  host_run nmh2 touch "$work/ro/x" 2>/dev/null && bad "the read-only view of $work/ro is writable on nmh2"
fault readonly "^nanomoe: error: ${on2}.*'$work/ro/new'.*(not writable|Read-only file system)" \
  train "$cfg" "${common[@]}" out_dir="$work/ro/new" max_iters=5
host_restore nmh2 "$work/ro"
nmh2_clean

# 9. nmh2 loses power while training: mpirun on nmh1 ends the job
loss=$work/loss
t0=$(now)
launch "$work/loss.log" 120 --host "$hosts" -n 4 "$bin" train "$cfg" "${common[@]}" out_dir="$loss" \
  max_iters=100000 ckpt_interval=5 &
job=$!
for _ in $(seq 600); do
  [ "$(find "$loss" -name 'ckpt_*.h5' 2>/dev/null | wc -l)" -ge 2 ] && break
  kill -0 $job 2>/dev/null || break
  sleep 0.1
done
n=$(find "$loss" -name 'ckpt_*.h5' 2>/dev/null | wc -l)
if [ "$n" -lt 2 ]; then
  bad "node loss: training wrote only $n checkpoints in $(since "$t0") s; log: $(tail -5 "$work/loss.log" | paste -sd'|')"
  kill -TERM $job 2>/dev/null
  wait $job
else
  t1=$(now)
  host_kill_all nmh2
  for _ in $(seq 300); do kill -0 $job 2>/dev/null || break; sleep 0.1; done
  if kill -0 $job 2>/dev/null; then
    bad "node loss: the job on nmh1 still runs $(since "$t1") s after nmh2 went down; log: $(tail -5 "$work/loss.log" | paste -sd'|')"
    kill -TERM $job
    host_kill_all nmh1
  fi
  wait $job
  rc=$? dt=$(since "$t1")
  # what is left of the job on nmh1 (the hosts share the PID namespace)
  net1=$(readlink /proc/"$(host_pid nmh1)"/ns/net)
  left=$(for p in $(pgrep -x nanomoe; pgrep -x orted; pgrep -x mpirun; pgrep -x mpiexec); do
    [ "$(readlink /proc/$p/ns/net 2>/dev/null)" = "$net1" ] && echo "$p($(cat /proc/$p/comm))"; done | paste -sd' ')
  [ $rc -ne 0 ] && [ $rc -ne 124 ] && [ $rc -ne 137 ] && [ -z "$left" ] &&
    ok "node loss: the job ends $dt s after nmh2 went down ($n checkpoints by then), exit $rc, nothing left on nmh1" ||
    bad "node loss: exit $rc $dt s after nmh2 went down, left on nmh1: ${left:-none}; log: $(tail -5 "$work/loss.log" | paste -sd'|')"
  tmps=$(ls "$loss" | grep "\.tmp$" | paste -sd' ')
  newest=$(cd "$loss" && ls ckpt_*.h5 | sort | tail -1)
  step=$((10#$(sed 's/ckpt_\([0-9]*\)\.h5/\1/' <<<"$newest")))
  # the survivor continues the run on its own, a few steps
  t0=$(now)
  launch "$work/survivor.log" 120 --host nmh1:2 -n 2 "$bin" train "$cfg" "${common[@]}" out_dir="$loss" \
    max_iters=$((step + 3)) ckpt_interval=5 resume=auto
  rc=$? dt=$(since "$t0")
  final=$(printf '%s/ckpt_%08d.h5' "$loss" $((step + 3)))
  stale=$(ls "$loss" | grep "\.tmp$" | paste -sd' ')
  [ $rc -eq 0 ] && grep -q "^resuming from $loss/$newest at step $step\$" "$work/survivor.log" && [ -s "$final" ] && [ -z "$stale" ] &&
    ok "node loss: nmh1 alone resumes from $newest at step $step (${tmps:+the kill left $tmps, ignored and removed; }log: resuming from $loss/$newest at step $step) and writes ckpt $((step + 3)) in $dt s" ||
    bad "node loss: resume on nmh1 (newest $newest${tmps:+, also $tmps}): exit $rc after $dt s, temporary files left: ${stale:-none}; log: $(grep -E 'resuming|error|checkpoint' "$work/survivor.log" | paste -sd'|')"
fi

cluster_down && left=$(cluster_leftovers "$ids") && [ -z "$left" ] && [ ! -e "$state" ] &&
  ok "cluster_down left no process in the hosts' or the switch's namespaces, no state" ||
  bad "cluster_down left processes ${left:-?} or $state"
exit $fail
