#!/usr/bin/env bash
# slurm/train.sbatch against a real single-node Slurm (Debian's slurmctld and
# slurmd on localhost, auth/none, no systemd), started here and stopped by
# PID at the end. Job 1: 2 tasks train configs/tiny.ini to the end; the
# checkpoint and run.h5 are checked. Job 2: USR1 to the batch script mid-run
# (what --signal=B:USR1@120 delivers before a time limit): the trainer
# checkpoints and exits 0, the script requeues the job, and the requeued job
# resumes and finishes. Fails loudly when Slurm is not installed.
# usage: slurm.sh NANOMOE REPO
set -u
source "$(dirname "$0")/lib.sh"
bin=$1 repo=$2
for tool in slurmctld slurmd sbatch scontrol squeue scancel srun; do
  command -v $tool >/dev/null || { echo "not ok - $tool not found: install slurmctld slurmd slurm-client (Debian)"; exit 1; }
done
[ "$(id -u)" -eq 0 ] || { echo "not ok - the test starts slurmd, which must run as root"; exit 1; }

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null; done
  rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/spool" "$work/state"
port=$((20000 + RANDOM % 20000))
cat >"$work/slurm.conf" <<CONF
ClusterName=nanomoe-test
SlurmctldHost=localhost
SlurmctldPort=$port
SlurmdPort=$((port + 1))
SlurmctldPidFile=$work/slurmctld.pid
SlurmdPidFile=$work/slurmd.pid
SlurmdSpoolDir=$work/spool
StateSaveLocation=$work/state
SlurmctldLogFile=$work/slurmctld.log
SlurmdLogFile=$work/slurmd.log
$(nm_slurm_conf_common)
NodeName=localhost NodeHostname=localhost CPUs=2 State=UNKNOWN
PartitionName=test Nodes=localhost Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
CONF
export SLURM_CONF=$work/slurm.conf
slurmctld -D -f "$SLURM_CONF" >"$work/slurmctld.out" 2>&1 &
pids+=($!)
sleep 1
slurmd -D -N localhost -f "$SLURM_CONF" >"$work/slurmd.out" 2>&1 &
pids+=($!)
for i in $(seq 60); do [ "$(sinfo -h -o %T 2>/dev/null)" = idle ] && break; sleep 0.5; done
[ "$(sinfo -h -o %T 2>/dev/null)" = idle ] && ok "slurmctld and slurmd up (port $port)" || {
  bad "Slurm did not come up: $(tail -3 "$work/slurmctld.log" "$work/slurmd.log" 2>&1)"; exit 1; }

nm_test_text "$work/text.txt" 5
export NANOMOE_BIN=$bin
cd "$repo"

# ---- job 1: to the end
if sbatch --wait --ntasks=2 --cpus-per-task=1 --output="$work/job1.out" slurm/train.sbatch configs/tiny.ini \
  data="$work/text.txt" out_dir="$work/run1" max_iters=60 eval_interval=20 stats_interval=10 log_interval=20 >/dev/null; then
  ok "job 1 (2 tasks) exits 0"
else bad "job 1 failed: $(tail -5 "$work/job1.out")"; fi
grep -q "2 task(s) x 1 thread(s)" "$work/job1.out" && grep -q "^ranks: 2 x 1 thread" "$work/job1.out" \
  && ok "job 1 ran 2 MPI ranks of 1 thread ($(grep -o 'srun --mpi=[a-z0-9]*\|mpirun' "$work/job1.out" | head -1))" || bad "job 1 launch: $(head -3 "$work/job1.out")"
out=$("$bin" inspect "$work/run1/ckpt_00000060.h5" 2>&1) && echo "$out" | grep -q "schema: ok" \
  && ok "job 1 wrote a valid checkpoint at step 60" || bad "job 1 checkpoint: $out"
out=$("$bin" inspect "$work/run1/run.h5" 2>&1) && echo "$out" | grep -q "rows: 6, steps 10 .. 60" \
  && ok "job 1 wrote run.h5 rows for steps 10 .. 60" || bad "job 1 run.h5: $out"

# ---- job 2: USR1 mid-run -> checkpoint, exit 0, requeue, resume, finish
jid=$(sbatch --parsable --ntasks=2 --cpus-per-task=1 --output="$work/job2.out" slurm/train.sbatch configs/tiny.ini \
  data="$work/text.txt" out_dir="$work/run2" max_iters=1200 eval_interval=400 stats_interval=50 log_interval=100)
for i in $(seq 300); do [ -s "$work/run2/metrics.csv" ] && [ "$(wc -l <"$work/run2/metrics.csv")" -ge 3 ] && break; sleep 0.2; done
scancel --batch --signal=USR1 "$jid"
state=""
for i in $(seq 600); do
  info=$(scontrol show job "$jid" 2>/dev/null)
  state=$(echo "$info" | grep -o 'JobState=[A-Z_]*' | cut -d= -f2)
  # Slurm holds a requeued job for about two minutes (BeginTime): let it start now
  # release the requeued job, but not in the second of the requeue: slurmd
  # refuses credentials of that second ("Job credential revoked")
  if [ "$state" = PENDING ] && echo "$info" | grep -q "Restarts=[1-9]"; then
    [ -n "${seen:-}" ] || seen=$(date +%s)
    [ "$(date +%s)" -lt $((seen + 2)) ] || scontrol update JobId="$jid" StartTime=now 2>/dev/null
  fi
  case "$state" in COMPLETED|FAILED|CANCELLED|TIMEOUT|NODE_FAIL|OUT_OF_MEMORY) break ;; esac
  sleep 0.5
done
step=$(grep -o 'stopping after step [0-9]* on SIGUSR1' "$work/job2.out" | grep -o '[0-9]\+' | head -1)
[ -n "$step" ] && [ -f "$(printf '%s/run2/ckpt_%08d.h5' "$work" "$step")" ] \
  && ok "job 2: USR1 stopped the trainer after step $step with a checkpoint" || bad "job 2: no stop on USR1: $(tail -5 "$work/job2.out")"
grep -q "trainer exited with status 0 after SIGUSR1" "$work/job2.out" && grep -q "requeueing job $jid" "$work/job2.out" \
  && ok "job 2: trainer exited 0 and the script requeued the job" || bad "job 2: no requeue"
scontrol show job "$jid" | grep -q "Restarts=1" && ok "job 2: Slurm restarted it once" || bad "job 2: restarts $(scontrol show job "$jid" | grep -o 'Restarts=[0-9]*')"
grep -q "(restart 1)" "$work/job2.out" && grep -q "resuming from .*ckpt_$(printf %08d "${step:-0}").h5 at step ${step:-0}" "$work/job2.out" \
  && ok "job 2: the requeued job resumed from step $step" || bad "job 2: no resume after requeue"
[ "$state" = COMPLETED ] && [ -f "$work/run2/ckpt_00001200.h5" ] && ok "job 2: finished all 1200 steps (state $state)" \
  || bad "job 2: state $state, files $(ls "$work/run2" | tr '\n' ' ')"
exit $fail
