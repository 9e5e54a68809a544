#!/usr/bin/env bash
# The "ssh" of the simulated hosts of cluster.sh, for Open MPI's rsh launcher
# (--mca plm_rsh_agent, set by cluster_mpirun) or anything else that starts
# remote commands like ssh:
#   agent.sh [ssh options] [USER@]HOST COMMAND...
# Like ssh, it joins COMMAND into one string for /bin/sh -c, runs it in
# HOST's namespaces in the home directory, and ignores the options. Unlike
# ssh, the command keeps the caller's environment (as on a cluster whose
# nodes share the login environment); this is how NM_CLUSTER_DIR reaches an
# orted that launches further orteds (tree spawn).
# Each call is logged to $NM_CLUSTER_DIR/agent.log.
set -u
: "${NM_CLUSTER_DIR:?agent.sh: NM_CLUSTER_DIR not set (cluster_up exports it)}"
source "$(dirname "${BASH_SOURCE[0]}")/cluster.sh"

# ssh's options that take an argument swallow the next word
while [ $# -gt 0 ]; do
  case $1 in
  -[BbcDEeFIiJLlmOopQRSWw]) shift 2 ;;
  -?*) shift ;;
  *) break ;;
  esac
done
[ $# -ge 2 ] || { echo "usage: agent.sh [ssh options] HOST COMMAND..." >&2; exit 255; }
host=${1#*@}
shift
# word by word: shows what the launcher really passes
{ printf '%s %s:' "$(date +%T.%N)" "$host"; printf ' [%s]' "$@"; echo; } >>"$NM_CLUSTER_DIR/agent.log"
cd "${HOME:-/}" || cd /
# exec all the way (nsenter, sh, orted): whoever started us can signal the
# remote command through our PID, as it would ssh's
_host_enter "$host" || exit 255
exec "${host_enter[@]}" /bin/sh -c "$*"
