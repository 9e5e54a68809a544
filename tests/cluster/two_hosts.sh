#!/usr/bin/env bash
# Two simulated hosts (cluster.sh: own network, hostname and mounts each,
# joined by a 1gbit-capped bridge). 4 ranks really land on nmh1 and nmh2; 30
# training steps of configs/tiny.ini on 2 hosts x 2 ranks match 1 rank outside
# the cluster bit for bit (losses and final checkpoint, optimizer included),
# with the traffic going over the hosts' eth0; afterwards nothing of the
# harness is left. Uses its own text.
# usage: two_hosts.sh NANOMOE MPIEXEC REPO
set -u
here=$(dirname "$0")
source "$here/../lib.sh"
source "$here/cluster.sh"
bin=$1 mpiexec=$2 repo=$3
py=/usr/bin/python3
nm_test_workdir
export OMP_NUM_THREADS=1 NM_CLUSTER_MPIRUN=$mpiexec
nm_test_text "$work/text.txt" 7

cluster_up 2 1gbit || { bad "cluster_up 2 1gbit"; exit 1; }
ids=$(cluster_ns_ids) state=$NM_CLUSTER_DIR
hosts=$(cluster_hosts 2)

got=$(cluster_mpirun --host "$hosts" -n 4 hostname 2>"$work/hostname.err" | sort | uniq -c | awk '{ printf "%s%s x%d", sep, $2, $1; sep = ", " }')
[ "$got" = "nmh1 x2, nmh2 x2" ] && ok "4 ranks run on two hosts: $got" || { cat "$work/hostname.err"; bad "hostname on 4 ranks: $got"; }

train() { # train OUT [LAUNCHER...]: 30 steps of tiny.ini, output in $work/OUT
  local out=$1
  shift
  "$@" "$bin" train "$repo/configs/tiny.ini" data="$work/text.txt" out_dir="$work/$out" \
    max_iters=30 log_interval=1 eval_interval=0 >"$work/$out.log" 2>&1 || { cat "$work/$out.log"; bad "training $out failed"; exit 1; }
}
train one # 1 rank, outside the cluster
read -r rx0 tx0 < <(host_netdev nmh2)
train two_hosts cluster_mpirun --host "$hosts" -n 4
read -r rx1 tx1 < <(host_netdev nmh2)

losses() { awk -F, '$1 == "train" { print $2, $3 }' "$work/$1/metrics.csv"; }
n=$(losses one | wc -l)
[ "$n" -eq 30 ] && [ "$(losses one)" = "$(losses two_hosts)" ] && ok "1 rank vs 2 hosts x 2 ranks: the $n losses identical" ||
  bad "1 rank vs 2 hosts x 2 ranks: losses differ ($n steps): $(diff <(losses one) <(losses two_hosts) | head -4 | paste -sd' ')"
msg=$($py "$repo/tools/compare_ckpt.py" "$work/one/ckpt_00000030.h5" "$work/two_hosts/ckpt_00000030.h5" --optimizer --quiet --tol 0) &&
  ok "checkpoints of 1 rank and 2 hosts bit-identical" || bad "checkpoints of 1 rank and 2 hosts not bit-identical: $(tail -1 <<<"$msg")"

# what the 2 ranks on nmh2 exchanged with nmh1 went through nmh2's eth0
# (about 7 MB each way for these 30 steps)
rx=$((rx1 - rx0)) tx=$((tx1 - tx0))
[ $rx -gt 2000000 ] && [ $tx -gt 2000000 ] && ok "nmh2's eth0 carried the training: $((rx / 1000000)) MB in, $((tx / 1000000)) MB out" ||
  bad "nmh2's eth0 during training: only $rx bytes in, $tx out"

cluster_down && left=$(cluster_leftovers "$ids") && [ -z "$left" ] && [ ! -e "$state" ] &&
  ok "cluster_down left no process in the hosts' or the switch's namespaces, no state" ||
  bad "cluster_down left processes ${left:-?} or $state"
exit $fail
