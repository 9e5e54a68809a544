#!/usr/bin/env bash
# Builds nanomoe and runs the whole test suite (CTest).
# usage: tools/test.sh [--data PATH] [ctest options ...]
#   --data PATH   Tiny Shakespeare for the tests that train on it; without it the
#                 file is downloaded (curl) to data/tinyshakespeare.txt, as tools/demo.sh does.
# Needs the Debian packages tools/demo.sh installs.
set -euo pipefail
cd "$(dirname "$0")/.."
data=""
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --data) data=${2:?--data needs a path}; shift 2 ;;
    --data=*) data=${1#--data=}; shift ;;
    -h|--help) sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) args+=("$1"); shift ;;
  esac
done
source tools/fetch_data.sh
data=$(nanomoe_fetch_data "$data")

# Open MPI refuses to run as root without these; tests oversubscribe the cores.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DNANOMOE_DATA="$data"
cmake --build build -j"$(nproc)"
ctest --test-dir build --output-on-failure "${args[@]}"
