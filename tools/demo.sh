#!/usr/bin/env bash
# From a fresh Debian 12 machine to generated Shakespeare: installs the missing
# Debian packages, builds, gets Tiny Shakespeare, trains the reference
# configuration (configs/shakespeare.ini) and prints generated text.
# usage: tools/demo.sh [--data PATH] [key=value ...]
#   --data PATH    a local copy of Tiny Shakespeare (else it is downloaded with curl)
#   key=value      config overrides, e.g. max_iters=1000 for a shorter run
# Threads: OMP_NUM_THREADS (default: all cores).
set -euo pipefail
cd "$(dirname "$0")/.."
data=""
over=()
while [ $# -gt 0 ]; do
  case "$1" in
    --data) data=${2:?--data needs a path}; shift 2 ;;
    --data=*) data=${1#--data=}; shift ;;
    -h|--help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) over+=("$1"); shift ;;
  esac
done

pkgs="build-essential cmake pkg-config curl libopenmpi-dev openmpi-bin libopenblas-dev libhdf5-openmpi-dev hdf5-tools libinih-dev python3-h5py python3-numpy python3-matplotlib slurmctld slurmd slurm-client mpich libmpich-dev libhdf5-mpich-dev iproute2 util-linux"
missing=$(for p in $pkgs; do dpkg -s "$p" >/dev/null 2>&1 || echo "$p"; done)
if [ -n "$missing" ]; then
  echo "installing Debian packages:" $missing
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get update -q && $sudo apt-get install -y -q $missing
fi

cmake -S . -B build -DCMAKE_BUILD_TYPE=Release
cmake --build build -j"$(nproc)"

source tools/fetch_data.sh
data=$(nanomoe_fetch_data "$data")

[ "$(id -u)" -eq 0 ] && export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
out=runs/demo-$(date +%Y%m%d-%H%M%S)
./build/nanomoe train configs/shakespeare.ini data="$data" out_dir="$out" "${over[@]}"
ckpt=$(ls "$out"/ckpt_*.h5 | tail -n 1)
./build/nanomoe eval "$ckpt"
echo "--- generated text ($ckpt) ---"
./build/nanomoe sample "$ckpt" --tokens 500
