# shellcheck shell=bash
# Sourced by multi-node tests: turns this machine into K simulated hosts.
#
# Host nmhI = a holder process (`sleep infinity`) in its own network, UTS and
# mount namespaces: its own hostname (so Open MPI and Slurm see separate nodes
# and never use shared memory between them), its own eth0 198.18.0.(10+I)/24,
# its own /etc/hosts and /dev/shm, and mounts that no other host sees. The
# hosts' eth0 are veth pairs whose other ends sit on a bridge in a "switch"
# namespace of its own, so nothing is created in, or sent from, the machine's
# real network namespace. The file system is otherwise shared, like a
# cluster's /home.
#
# API (all need root; call cluster_up in the main shell, not in a subshell,
# and after setting any EXIT trap of your own, e.g. nm_test_workdir):
#   cluster_up K [RATE]     create nmh1..nmhK; RATE (e.g. 1gbit, 100mbit)
#                           caps each host's egress with tbf. Installs
#                           cluster_down as EXIT trap (before the old one)
#                           and makes INT/TERM exit. Exports NM_CLUSTER_DIR
#                           (state, under /run) for agent.sh. Returns non-zero
#                           with a message on failure ("needs root: ...").
#   cluster_down            kill everything in the hosts, the holders and the
#                           switch; remove the state dir. Idempotent. Returns
#                           non-zero (and says what) if anything survived.
#   cluster_hosts N         "nmh1:N,nmh2:N,...": an mpirun --host list.
#   cluster_mpirun ARGS...  $NM_CLUSTER_MPIRUN (default mpirun) on nmh1, over
#                           TCP on 198.18.0.0/24 (vader within a host),
#                           launched through agent.sh, --oversubscribe
#                           --bind-to none, mpi_yield_when_idle 1 (the hosts
#                           share this machine's cores), session dirs in
#                           $NM_CLUSTER_DIR/tmp; OMPI_ALLOW_RUN_AS_ROOT set. The caller gives --host (see cluster_hosts)
#                           and -n. Every rank gets the caller's environment.
#   cluster_ns_ids          the namespace ids (net:[...], mnt:[...]) of the
#                           harness, one a line: for leftover checks.
#   host_run HOST CMD...    run CMD (an executable, not a shell function) in
#                           HOST's namespaces, in the caller's environment
#                           and working directory.
#   host_bg HOST CMD...     the same in the background (for daemons; put
#                           redirections on the host_bg call); the PID is left
#                           in $host_bg_pid (CMD's own PID: nsenter execs it),
#                           `wait $host_bg_pid` gives its status. cluster_down
#                           kills it.
#   host_kill_all HOST      SIGKILL every process in HOST's namespaces except
#                           the holder, as if the machine lost power.
#   host_hide HOST PATH     in HOST only: a file reads as empty (0 bytes), a
#                           directory as empty (its entries are missing -- hide
#                           the directory to make a file missing). A hidden
#                           directory is writable: a host-private /var/tmp,
#                           TmpFS, spool dir. (Hiding /tmp also hides what
#                           the other hosts share there, like the binary.)
#   host_replace HOST PATH SRC   in HOST only: PATH shows a copy of SRC as it is
#                           now (same kind: file over file, dir over dir).
#   host_restore HOST PATH  undo the last host_hide/host_replace of PATH.
#   host_netdev HOST        "RX TX": bytes received/sent by HOST's eth0.
#   host_pid HOST           the holder's PID (for nsenter -t).
#   cluster_leftovers IDS   PIDs still in the namespaces IDS (from
#                           cluster_ns_ids before cluster_down): should be none.
# The hosts share the machine's PID namespace and /proc: `ps` in a host lists
# every process of the machine. /sys/class/net shows the machine's devices
# too (sysfs keeps the network namespace it was mounted in); use ip(8) or
# /proc/net, which are per namespace.

nm_cluster_lib=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# _cluster_wait_holder PID: unshare forks nothing; it unshares and then execs
# sleep, so once PID runs sleep its namespaces are complete.
_cluster_wait_holder() {
  local i
  for i in $(seq 100); do
    [ "$(cat /proc/$1/comm 2>/dev/null)" = sleep ] && return 0
    kill -0 "$1" 2>/dev/null || break
    sleep 0.05
  done
  echo "cluster: holder $1 did not start" >&2
  return 1
}

# _cluster_holder NAME UNSHARE-OPTIONS...: start a holder, record its PID.
_cluster_holder() {
  local name=$1
  shift
  # pdeathsig: a holder dies with the test's shell even if that is killed
  # with SIGKILL and cannot run cluster_down
  setpriv --pdeathsig KILL unshare "$@" sleep infinity </dev/null >/dev/null 2>&1 &
  echo $! >"$NM_CLUSTER_DIR/$name.pid"
  _cluster_wait_holder $!
}

host_pid() {
  cat "$NM_CLUSTER_DIR/$1.pid" 2>/dev/null || { echo "cluster: no host $1" >&2; return 1; }
}

# _host_enter HOST: the nsenter command line that enters HOST, in the
# caller's working directory (nsenter --mount would otherwise start in "/").
_host_enter() {
  local pid
  pid=$(host_pid "$1") || return 1
  host_enter=(nsenter -t "$pid" --net --uts --mount --wd="$PWD" --)
}

host_run() {
  local host_enter
  _host_enter "$1" || return 1
  shift
  "${host_enter[@]}" "$@"
}

# A simple command put in the background is forked and exec'd directly, and
# nsenter execs CMD (it forks only to enter a PID namespace): $! is CMD.
host_bg() {
  local host_enter
  _host_enter "$1" || return 1
  shift
  "${host_enter[@]}" "$@" &
  host_bg_pid=$!
  echo $host_bg_pid >>"$NM_CLUSTER_DIR/bg.pids"
}

# _cluster_setup_host I RATE: namespaces, hostname, eth0 on the bridge,
# address, optional tbf, /etc/hosts, and a /dev/shm of its own as a real host
# has (what a killed host leaves there vanishes with its mount namespace).
_cluster_setup_host() {
  local h=nmh$1 rate=$2 pid sw
  _cluster_holder $h --net --uts --mount --propagation private || return 1
  pid=$(host_pid $h) sw=$(host_pid switch)
  host_run $h hostname $h &&
    host_run $h sysctl -q -w net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1 &&
    host_run $h ip link set lo up &&
    nsenter -t "$sw" --net -- ip link add $h type veth peer name eth0 netns "$pid" &&
    nsenter -t "$sw" --net -- ip link set $h master br0 up &&
    host_run $h ip addr add 198.18.0.$((10 + $1))/24 dev eth0 &&
    host_run $h ip link set eth0 up &&
    host_run $h mount --bind "$NM_CLUSTER_DIR/hosts" /etc/hosts &&
    host_run $h mount -t tmpfs -o mode=1777,size=256m "shm-$h" /dev/shm || return 1
  [ -z "$rate" ] || host_run $h tc qdisc add dev eth0 root tbf rate "$rate" burst "$(_cluster_burst "$rate")" latency 50ms
}

# _cluster_burst RATE: tbf's bucket, 10 ms worth of RATE (at least 16 KiB):
# smaller than rate/HZ and tbf cannot reach the rate; much larger and short
# transfers are not capped at all.
_cluster_burst() {
  local n=${1%%[a-zA-Z]*} unit=${1##*[0-9.]}
  case $unit in
  gbit) n=$((n * 1000000000)) ;; mbit) n=$((n * 1000000)) ;; kbit) n=$((n * 1000)) ;; bit) ;;
  *) echo "cluster: RATE must be like 1gbit, 100mbit, 500kbit (got $1)" >&2; return 1 ;;
  esac
  n=$((n / 8 / 100))
  echo $((n < 16384 ? 16384 : n))
}

cluster_up() {
  local k=${1:?usage: cluster_up K [RATE]} rate=${2:-} i tool
  [ "$(id -u)" -eq 0 ] || { echo "needs root: cluster_up creates network, UTS and mount namespaces" >&2; return 1; }
  for tool in unshare nsenter setpriv ip tc mount; do
    command -v $tool >/dev/null || { echo "cluster: $tool not found (apt-get install iproute2 util-linux)" >&2; return 1; }
  done
  [ "$k" -ge 1 ] && [ "$k" -le 200 ] || { echo "cluster: K must be 1..200" >&2; return 1; }
  [ -z "$rate" ] || _cluster_burst "$rate" >/dev/null || return 1
  [ -z "${NM_CLUSTER_DIR:-}" ] || { echo "cluster: already up ($NM_CLUSTER_DIR)" >&2; return 1; }
  export NM_CLUSTER_DIR
  # not in /tmp: a test may give a host a private /tmp (host_hide), and the
  # hosts must keep seeing the state (agent.sh, sources of bind mounts)
  NM_CLUSTER_DIR=$(mktemp -d /run/nmcluster.XXXXXX)
  mkdir "$NM_CLUSTER_DIR/files" "$NM_CLUSTER_DIR/tmp"
  _cluster_trap
  { printf '127.0.0.1\tlocalhost\n'; for i in $(seq "$k"); do printf '198.18.0.%d\tnmh%d\n' $((10 + i)) "$i"; done; } >"$NM_CLUSTER_DIR/hosts"
  chmod 644 "$NM_CLUSTER_DIR/hosts"
  _cluster_holder switch --net || return 1
  # no IPv6 on the switch's ports either: no router solicitations, no MLD,
  # so the hosts' eth0 counters count only what the hosts send
  nsenter -t "$(host_pid switch)" --net -- sh -c 'sysctl -q -w net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1 &&
    ip link set lo up && ip link add br0 type bridge && ip link set br0 up' || return 1
  for i in $(seq "$k"); do
    _cluster_setup_host "$i" "$rate" || { echo "cluster: setting up nmh$i failed" >&2; return 1; }
    echo "nmh$i" >>"$NM_CLUSTER_DIR/hostnames"
  done
}

# _cluster_trap: cluster_down on EXIT, before whatever EXIT trap the caller
# already had (e.g. nm_test_workdir's). INT/TERM turn into exit so that the
# EXIT trap runs when a test is interrupted too.
# shellcheck disable=SC2064,SC2120 # the old trap's text is expanded now, on purpose
_cluster_trap() {
  local old
  old=$(trap -p EXIT) # trap -- 'CMD' EXIT
  eval "set -- $old"
  trap "cluster_down; ${3:-}" EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
}

# _cluster_ns PID: those namespaces of PID that are not the machine's, one
# id (net:[...]) a line. Being in one of them is what makes a process part of
# a host (or of the switch). Leaving out the machine's own namespaces matters:
# the switch shares the machine's mount namespace.
_cluster_ns() {
  local t id
  for t in net mnt uts; do
    id=$(readlink /proc/$1/ns/$t 2>/dev/null) || continue
    [ "$id" = "$(readlink /proc/$$/ns/$t)" ] || echo "$id"
  done
}

# _cluster_in IDS: PIDs of the processes in any of the namespaces IDS. One
# find over /proc, not a readlink per process: teardown scans repeatedly.
_cluster_in() {
  [ -n "$1" ] || return 0
  find /proc/[0-9]*/ns -maxdepth 1 \( -name net -o -name mnt -o -name uts \) -printf '%p %l\n' 2>/dev/null |
    awk -v ids="$1" 'BEGIN { n = split(ids, a, "\n"); for (i = 1; i <= n; i++) want[a[i]] }
      $2 in want { split($1, p, "/"); print p[3] }' | sort -un
}

# _cluster_kill_procs HOLDER-PID: SIGKILL everything in the holder's
# namespaces but the holder, until nothing is left (a dying launcher may
# still be forking).
_cluster_kill_procs() {
  local i ids pids
  ids=$(_cluster_ns "$1")
  for i in $(seq 50); do
    pids=$(_cluster_in "$ids" | grep -vx "$1")
    [ -n "$pids" ] || return 0
    kill -9 $pids 2>/dev/null
    sleep 0.1
  done
  echo "cluster: processes of holder $1 survive SIGKILL: $pids" >&2
  return 1
}

host_kill_all() {
  local pid
  pid=$(host_pid "$1") || return 1
  _cluster_kill_procs "$pid"
}

cluster_ns_ids() {
  local f
  for f in "$NM_CLUSTER_DIR"/*.pid; do _cluster_ns "$(cat "$f")"; done | sort -u
}

cluster_leftovers() {
  _cluster_in "$1"
}

cluster_down() {
  [ -n "${NM_CLUSTER_DIR:-}" ] || return 0
  local f pid rc=0 ids
  ids=$(cluster_ns_ids)
  # host_bg's jobs are our children: disowned, they die without a "Killed"
  # line from bash and are still reaped
  [ ! -e "$NM_CLUSTER_DIR/bg.pids" ] || for pid in $(cat "$NM_CLUSTER_DIR/bg.pids"); do disown "$pid" 2>/dev/null; done
  for f in "$NM_CLUSTER_DIR"/*.pid; do
    [ -e "$f" ] || continue
    pid=$(cat "$f")
    # only a holder that still runs sleep is ours: never kill a reused PID
    [ "$(cat /proc/$pid/comm 2>/dev/null)" = sleep ] || continue
    _cluster_kill_procs "$pid" || rc=1
    { kill -9 "$pid"; wait "$pid"; } 2>/dev/null
  done
  rm -rf "$NM_CLUSTER_DIR"
  unset NM_CLUSTER_DIR
  pid=$(_cluster_in "$ids")
  [ -z "$pid" ] || { echo "cluster: left behind: PIDs" $pid >&2; rc=1; }
  return $rc
}

cluster_hosts() {
  sed "s/\$/:${1:?usage: cluster_hosts SLOTS}/" "$NM_CLUSTER_DIR/hostnames" | paste -sd,
}

# All hosts share this machine's cores, but each host's mpirun/orted sees only
# its own ranks and would not call itself oversubscribed: without
# mpi_yield_when_idle, 4 ranks busy-polling 2 cores make a 2 s run take 50 s.
# Session directories go to the state dir, not the shared /tmp, so that a
# killed host leaves none behind.
cluster_mpirun() {
  host_run nmh1 env OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 \
    "${NM_CLUSTER_MPIRUN:-mpirun}" --mca plm_rsh_agent "$nm_cluster_lib/agent.sh" \
    --mca btl tcp,vader,self --mca pml ob1 \
    --mca btl_tcp_if_include 198.18.0.0/24 --mca oob_tcp_if_include 198.18.0.0/24 \
    --mca orte_tmpdir_base "$NM_CLUSTER_DIR/tmp" \
    --mca mpi_yield_when_idle 1 --oversubscribe --bind-to none "$@"
}

# _host_mount HOST SRC PATH: bind SRC over PATH in HOST's mount namespace
# only (private propagation: neither the machine nor other hosts see it).
_host_mount() {
  host_run "$1" mount --bind "$2" "$3"
}

host_hide() {
  local empty
  if host_run "$1" test -d "$2"; then
    empty=$(mktemp -d "$NM_CLUSTER_DIR/files/hide.XXXXXX") && chmod 755 "$empty"
  else
    empty=$(mktemp "$NM_CLUSTER_DIR/files/hide.XXXXXX") && chmod 644 "$empty"
  fi || return 1
  _host_mount "$1" "$empty" "$2"
}

host_replace() {
  local copy
  copy=$(mktemp -u "$NM_CLUSTER_DIR/files/replace.XXXXXX")
  cp -a "$3" "$copy" && _host_mount "$1" "$copy" "$2"
}

host_restore() {
  host_run "$1" umount "$2"
}

host_netdev() {
  host_run "$1" cat /proc/net/dev | awk '{ sub(/:/, " ") } $1 == "eth0" { print $2, $10 }'
}
