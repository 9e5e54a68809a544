#!/usr/bin/env bash
# slurm/train.sbatch on a real two-node Slurm in the simulated cluster
# (cluster.sh): slurmctld on nmh1, a slurmd on each of nmh1 and nmh2, started
# in the hosts' namespaces (auth/none, ports at random, state, spool and logs
# in the work dir, a private TmpFS per host), all killed by cluster_down.
# Job 1: 2 nodes x 2 tasks train configs/tiny.ini to the end, launched by
# `srun --mpi=pmix` (the script's automatic choice), with the ranks on both
# hosts and the traffic on nmh2's eth0. Job 2: USR1 to the batch script
# mid-run -> the 4 ranks checkpoint and exit 0, the script requeues the job,
# the requeued job resumes on both nodes from that checkpoint and finishes.
# Afterwards nothing of the harness is left. Fails (never skips) without root
# or without Slurm.
# usage: slurm.sh NANOMOE MPIEXEC REPO   (MPIEXEC unused: srun launches)
set -u
here=$(cd "$(dirname "$0")" && pwd)
source "$here/../lib.sh"
source "$here/cluster.sh"
bin=$1 repo=$3
for tool in slurmctld slurmd sbatch scontrol sinfo squeue scancel srun; do
  command -v $tool >/dev/null || { echo "not ok - $tool not found: install slurmctld slurmd slurm-client (Debian)"; exit 1; }
done
[ "$(id -u)" -eq 0 ] || { echo "not ok - the test creates namespaces and starts slurmd, which need root"; exit 1; }
case $bin in /*) ;; *) bin=$PWD/$bin ;; esac
case $repo in /*) ;; *) repo=$PWD/$repo ;; esac

nm_test_workdir
# every rank of every job runs this copy: a rebuild of NANOMOE during the test
# cannot give the ranks of a job different binaries
cp "$bin" "$work/nanomoe" || { bad "cannot copy $bin"; exit 1; }
bin=$work/nanomoe
# nothing of an enclosing Slurm job or of the caller's Slurm defaults
unset $(env | grep -o '^\(SLURM\|SBATCH\|SRUN\|SALLOC\)_[A-Za-z0-9_]*') NANOMOE_LAUNCHER
nm_test_text "$work/text.txt" 11
mkdir -p "$work/state" "$work/spool-nmh1" "$work/spool-nmh2" "$work/tmpfs" "$work/ompi"

cluster_up 2 || { bad "cluster_up 2"; exit 1; }
ids=$(cluster_ns_ids) state=$NM_CLUSTER_DIR
# slurmstepd's PMIx server makes <TmpFS>/spmix_appdir_<uid>_<job>.<step> on
# every node and fails if it exists: the hosts share /tmp, so each gets a
# private, empty TmpFS (a node-local /tmp on a real cluster)
host_hide nmh1 "$work/tmpfs" && host_hide nmh2 "$work/tmpfs" || { bad "private TmpFS per host"; exit 1; }

# Each host has its own network namespace: the ports only have to be free in
# there. %n is the node's name (one slurmd per node, sharing the file system).
port=$((20000 + RANDOM % 20000))
cat >"$work/slurm.conf" <<CONF
ClusterName=nmcluster
SlurmctldHost=nmh1(198.18.0.11)
SlurmctldPort=$port
SlurmdPort=$((port + 1))
SrunPortRange=$((port + 2))-$((port + 200))
SlurmctldPidFile=$work/slurmctld.pid
SlurmctldLogFile=$work/slurmctld.log
StateSaveLocation=$work/state
SlurmdPidFile=$work/slurmd-%n.pid
SlurmdSpoolDir=$work/spool-%n
SlurmdLogFile=$work/slurmd-%n.log
TmpFS=$work/tmpfs
MailProg=/bin/true
$(nm_slurm_conf_common)
NodeName=nmh1 NodeAddr=198.18.0.11 CPUs=2 State=UNKNOWN
NodeName=nmh2 NodeAddr=198.18.0.12 CPUs=2 State=UNKNOWN
PartitionName=test Nodes=nmh1,nmh2 Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
CONF
export SLURM_CONF=$work/slurm.conf
# Slurm's commands talk to slurmctld on 198.18.0.11: run them in a host
s() { host_run nmh1 "$@"; }

t0=$SECONDS
host_bg nmh1 slurmctld -D -f "$SLURM_CONF" >"$work/slurmctld.out" 2>&1
for i in $(seq 100); do s scontrol ping 2>/dev/null | grep -q "is UP" && break; sleep 0.1; done
host_bg nmh1 slurmd -D -f "$SLURM_CONF" >"$work/slurmd-nmh1.out" 2>&1
host_bg nmh2 slurmd -D -f "$SLURM_CONF" >"$work/slurmd-nmh2.out" 2>&1
nodes() { s sinfo -h -N -o '%N %T' 2>/dev/null | sort | paste -sd' '; }
for i in $(seq 150); do [ "$(nodes)" = "nmh1 idle nmh2 idle" ] && break; sleep 0.2; done
[ "$(nodes)" = "nmh1 idle nmh2 idle" ] && ok "slurmctld on nmh1, slurmd on nmh1 and nmh2: both nodes idle ($((SECONDS - t0)) s, port $port)" || {
  bad "Slurm did not come up: nodes '$(nodes)': $(tail -n 3 "$work"/slurm*.log "$work"/*.out 2>&1 | paste -sd' ')"; exit 1; }

# Open MPI in the hosts: TCP on the test subnet only (vader within a host);
# the 4 ranks share 2 cores, so they must yield instead of busy-polling
export OMPI_MCA_btl=tcp,vader,self OMPI_MCA_pml=ob1 \
  OMPI_MCA_btl_tcp_if_include=198.18.0.0/24 OMPI_MCA_oob_tcp_if_include=198.18.0.0/24 \
  OMPI_MCA_mpi_yield_when_idle=1 OMPI_MCA_orte_tmpdir_base=$work/ompi \
  OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1 NANOMOE_BIN=$bin

s srun --mpi=list 2>&1 | grep -q pmix && ok "srun offers the PMIx plugin" || bad "srun --mpi=list: no pmix: $(s srun --mpi=list 2>&1 | paste -sd' ')"
got=$(host_run nmh2 timeout 60 srun -N 2 --ntasks-per-node=2 hostname 2>"$work/hostname.err" | sort | uniq -c | awk '{ printf "%s%s x%d", sep, $2, $1; sep = ", " }')
[ "$got" = "nmh1 x2, nmh2 x2" ] && ok "srun -N 2 --ntasks-per-node=2 (from nmh2) runs on both nodes: $got" || bad "srun hostname: '$got' $(paste -sd' ' "$work/hostname.err")"

# job_field JID FIELD: FIELD=... of `scontrol show job`
job_field() { s scontrol -o show job "$1" 2>/dev/null | tr ' ' '\n' | sed -n "s/^$2=//p"; }
# wait_job JID SECONDS: until JID has ended; echo its state. Slurm holds a
# requeued job for cred_expire + 1 s (121 s by default, its BeginTime): release
# it, but not in the second of the requeue: the slurmds revoked the job's
# credentials then, and refuse any credential of the job not created after
# that second ("Killing non-startable batch JobId=N: Job credential revoked").
wait_job() {
  local end=$((SECONDS + $2)) st info seen=""
  while :; do
    info=$(s scontrol -o show job "$1" 2>/dev/null)
    st=$(echo "$info" | grep -o 'JobState=[A-Z_]*' | cut -d= -f2)
    case "$st" in COMPLETED | FAILED | CANCELLED | TIMEOUT | NODE_FAIL | OUT_OF_MEMORY | PREEMPTED | BOOT_FAIL | DEADLINE) break ;; esac
    [ $SECONDS -lt $end ] || break
    if [ "$st" = PENDING ] && echo "$info" | grep -q "Restarts=[1-9]"; then
      [ -n "$seen" ] || seen=$(date +%s)
      [ "$(date +%s)" -lt $((seen + 2)) ] || s scontrol update JobId="$1" StartTime=now 2>/dev/null
    fi
    sleep 0.25
  done
  echo "${st:-unknown}"
}
# inspect FILE: `nanomoe inspect` on nmh1 (the OMPI_MCA_*_if_include above
# name a subnet that exists only in the hosts)
inspect() { host_run nmh1 "$bin" inspect "$@" 2>&1; }
# ckpt DIR STEP: the checkpoint's path
ckpt() { printf '%s/ckpt_%08d.h5' "$1" "$2"; }
# launches JID: the slurmds that launched step JID.0, e.g. "nmh1 nmh2"
launches() { grep -l "launch task StepId=$1\.0 " "$work"/slurmd-nmh*.log 2>/dev/null | sed 's/.*slurmd-\(nmh[0-9]*\)\.log/\1/' | sort | paste -sd' '; }

cd "$repo" || exit 1

# ---- job 1: 2 nodes x 2 tasks, to the end
t0=$SECONDS
read -r rx0 tx0 < <(host_netdev nmh2)
jid1=$(s sbatch --parsable -N 2 --ntasks-per-node=2 --cpus-per-task=1 --output="$work/job1.out" slurm/train.sbatch configs/tiny.ini \
  data="$work/text.txt" out_dir="$work/run1" max_iters=40 eval_interval=20 stats_interval=10 log_interval=20 2>"$work/sbatch1.err")
st=$( [ -n "$jid1" ] && wait_job "$jid1" 120)
read -r rx1 tx1 < <(host_netdev nmh2)
[ "$st" = COMPLETED ] && [ "$(job_field "$jid1" ExitCode)" = 0:0 ] && ok "job 1 (2 nodes x 2 tasks) COMPLETED, exit 0 ($((SECONDS - t0)) s)" ||
  bad "job 1: '$jid1' state ${st:-?} exit $(job_field "$jid1" ExitCode): $(cat "$work/sbatch1.err") $(tail -n 5 "$work/job1.out" 2>&1)"
head1=$(grep -m1 '^train.sbatch: job' "$work/job1.out")
nodelist=$(echo "$head1" | sed -n 's/.* on \([^ ]*\): .*/\1/p')
[ "$(s scontrol show hostnames "$nodelist" 2>/dev/null | paste -sd' ')" = "nmh1 nmh2" ] && echo "$head1" | grep -q ": 4 task(s) x 1 thread(s), srun --mpi=pmix " &&
  [ "$(job_field "$jid1" NodeList)" = "$nodelist" ] && [ "$(job_field "$jid1" NumNodes)" = 2 ] && [ "$(job_field "$jid1" NumTasks)" = 4 ] &&
  ok "job 1 ran on $nodelist (= scontrol's NodeList), 4 tasks, launched by srun --mpi=pmix" || bad "job 1 placement/launcher: '$head1', scontrol NodeList $(job_field "$jid1" NodeList)"
grep -q "^ranks: 4 x 1 thread" "$work/job1.out" && ok "job 1: the trainer saw 4 MPI ranks of 1 thread" || bad "job 1: no 'ranks: 4 x 1 thread': $(grep -m1 '^ranks' "$work/job1.out")"
[ "$(launches "$jid1")" = "nmh1 nmh2" ] && ok "job 1: the slurmds of both nmh1 and nmh2 launched its step" || bad "job 1: step launched by '$(launches "$jid1")'"
rx=$((rx1 - rx0)) tx=$((tx1 - tx0))
[ $rx -gt 2000000 ] && [ $tx -gt 2000000 ] && ok "job 1: nmh2's eth0 carried the training: $((rx / 1000000)) MB in, $((tx / 1000000)) MB out" ||
  bad "job 1: nmh2's eth0 only $rx bytes in, $tx out"
out=$(inspect "$(ckpt "$work/run1" 40)") && echo "$out" | grep -q "schema: ok" &&
  ok "job 1 wrote a valid final checkpoint at step 40" || bad "job 1 checkpoint: $out"

# ---- job 2: USR1 mid-run -> checkpoint, exit 0, requeue, resume on 2 nodes, finish
t0=$SECONDS
max=600
jid2=$(s sbatch --parsable -N 2 --ntasks-per-node=2 --cpus-per-task=1 --output="$work/job2.out" slurm/train.sbatch configs/tiny.ini \
  data="$work/text.txt" out_dir="$work/run2" max_iters=$max eval_interval=300 stats_interval=50 log_interval=100 2>"$work/sbatch2.err")
end=$((SECONDS + 60))
until [ -s "$work/run2/metrics.csv" ] && [ "$(wc -l <"$work/run2/metrics.csv")" -ge 3 ] || [ $SECONDS -ge $end ]; do sleep 0.1; done
# the running ranks: which host (UTS namespace) each is in, its Slurm and
# PMIx rank, its parent (slurmstepd: started by srun, not by an orted)
uts1=$(readlink /proc/"$(host_pid nmh1)"/ns/uts) uts2=$(readlink /proc/"$(host_pid nmh2)"/ns/uts)
ranks=$(for p in $(pgrep -x nanomoe); do
  u=$(readlink /proc/"$p"/ns/uts) || continue
  case $u in "$uts1") h=nmh1 ;; "$uts2") h=nmh2 ;; *) continue ;; esac
  env=$(tr '\0' '\n' </proc/"$p"/environ 2>/dev/null)
  echo "$h task $(echo "$env" | sed -n 's/^SLURM_PROCID=//p') pmix $(echo "$env" | sed -n 's/^PMIX_RANK=//p') $(cat /proc/"$(awk '{ print $4 }' /proc/"$p"/stat)"/comm)"
done | sort -k3n | paste -sd,)
[ "$ranks" = "nmh1 task 0 pmix 0 slurmstepd,nmh1 task 1 pmix 1 slurmstepd,nmh2 task 2 pmix 2 slurmstepd,nmh2 task 3 pmix 3 slurmstepd" ] &&
  ok "job 2 runs ranks 0,1 on nmh1 and 2,3 on nmh2, started by slurmstepd with PMIx ranks" || bad "job 2's ranks: '$ranks'"
s scancel --batch --signal=USR1 "$jid2"
st=$( [ -n "$jid2" ] && wait_job "$jid2" 120)
step=$(grep -o 'stopping after step [0-9]* on SIGUSR1' "$work/job2.out" | grep -o '[0-9]\+' | head -1)
[ -n "$step" ] && [ "$step" -lt $max ] && out=$(inspect "$(ckpt "$work/run2" "$step")") && echo "$out" | grep -q "schema: ok" &&
  ok "job 2: USR1 stopped the trainer after step $step with a valid checkpoint" || bad "job 2: no stop on USR1: $(head -c 2000 "$work/job2.out")"
grep -q "trainer exited with status 0 after SIGUSR1" "$work/job2.out" && grep -q "requeueing job $jid2" "$work/job2.out" &&
  ok "job 2: the trainer exited 0 and the script requeued the job" || bad "job 2: no requeue"
[ "$(job_field "$jid2" Restarts)" = 1 ] && ok "job 2: Slurm restarted it once" || bad "job 2: Restarts=$(job_field "$jid2" Restarts)"
head2=$(grep '^train.sbatch: job .* (restart 1) on ' "$work/job2.out")
nodelist=$(echo "$head2" | sed -n 's/.* on \([^ ]*\): .*/\1/p')
[ "$(s scontrol show hostnames "$nodelist" 2>/dev/null | paste -sd' ')" = "nmh1 nmh2" ] && echo "$head2" | grep -q ": 4 task(s) x 1 thread(s), srun --mpi=pmix " &&
  [ "$(grep -c "launch task StepId=$jid2\.0 " "$work/slurmd-nmh2.log")" = 2 ] && [ "$(grep -c '^ranks: 4 x 1 thread' "$work/job2.out")" = 2 ] &&
  ok "job 2: the requeued run had 4 ranks on $nodelist again (srun --mpi=pmix)" || bad "job 2: requeued run: '$head2'"
grep -q "resuming from .*$(basename "$(ckpt . "${step:-0}")") at step ${step:-0}\$" "$work/job2.out" &&
  ok "job 2: the requeued run resumed from step $step" || bad "job 2: no resume: $(grep -m2 'resum' "$work/job2.out" | paste -sd' ')"
[ "$st" = COMPLETED ] && [ "$(job_field "$jid2" ExitCode)" = 0:0 ] && out=$(inspect "$(ckpt "$work/run2" $max)") && echo "$out" | grep -q "schema: ok" &&
  ok "job 2: finished all $max steps, COMPLETED, exit 0 ($((SECONDS - t0)) s)" ||
  bad "job 2: state ${st:-?} exit $(job_field "$jid2" ExitCode), files $(ls "$work/run2" | paste -sd' '): $(tail -n 5 "$work/job2.out")"

# ---- teardown: the daemons, their steps and the hosts go
cd "$work" || exit 1
cluster_down && left=$(cluster_leftovers "$ids") && [ -z "$left" ] && [ ! -e "$state" ] &&
  [ -z "$(pgrep -f "$work/slurm.conf")" ] &&
  ok "cluster_down stopped slurmctld and the slurmds, left no process in the hosts' or the switch's namespaces, no state" ||
  bad "cluster_down left processes ${left:-?} $(pgrep -f "$work/slurm.conf" | paste -sd' ') or $state"
exit $fail
