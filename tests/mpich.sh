#!/usr/bin/env bash
# nanomoe builds and trains with MPICH too. Configures and builds the nanomoe
# command against MPICH and MPICH's parallel HDF5 (Debian's mpicc.mpich,
# h5pcc.mpich) in its own build directory, checks that it links MPICH only,
# trains 20 steps of configs/tiny.ini on 2 ranks with mpiexec.mpich, and
# compares with the same run of the Open MPI build on 2 ranks (bit-identical:
# nanomoe sums gradients in its own fixed tree, so the MPI library does not
# choose any reduction order at 2 ranks) and on 1 rank (rank-count invariance,
# as ranks.sh). The MPICH build is configured like the Open MPI one (build
# type, NANOMOE_NATIVE, C flags from its CMakeCache.txt), since different
# compile flags give different bits. Uses its own text.
# usage: mpich.sh REPO OPENMPI_NANOMOE OPENMPI_MPIEXEC [BUILD_DIR]
#   BUILD_DIR: where to build the MPICH nanomoe (kept, so a rerun is incremental);
#   default: a temporary directory, removed at exit.
# Needs the Debian packages mpich libmpich-dev libhdf5-mpich-dev.
set -u
source "$(dirname "$0")/lib.sh"
repo=$1 ompi_bin=$2 ompi_mpiexec=$3 build=${4:-}
py=/usr/bin/python3
nm_test_workdir
[ -n "$build" ] || build=$work/build
# one thread per rank; PASSIVE: MPICH binds no rank to a core, so spinning
# OpenMP threads of two ranks would fight over the 2 cores (10x slower)
export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE OPENBLAS_NUM_THREADS=1 OMPI_MCA_pml=${OMPI_MCA_pml:-ob1}

missing=""
for prog in mpicc.mpich:libmpich-dev mpiexec.mpich:mpich h5pcc.mpich:libhdf5-mpich-dev; do
  [ -x "/usr/bin/${prog%%:*}" ] || missing="$missing ${prog#*:}"
done
if [ -n "$missing" ]; then
  bad "MPICH is not installed (no mpicc.mpich, mpiexec.mpich or h5pcc.mpich in /usr/bin): apt-get install mpich libmpich-dev libhdf5-mpich-dev (missing:$missing)"
  exit 1
fi
ok "MPICH installed: $(/usr/bin/mpichversion 2>/dev/null | sed -n 's/^MPICH Version:[[:space:]]*//p'), $(/usr/bin/h5pcc.mpich -showconfig 2>/dev/null | sed -n 's/^[[:space:]]*HDF5 Version: //p' | head -1)"

# the Open MPI build's settings, so that both binaries are compiled alike
cache=$(dirname "$ompi_bin")/CMakeCache.txt
cached() { [ -f "$cache" ] && sed -n "s/^$1:[A-Z]*=//p" "$cache" | head -1; }
like=()
for var in CMAKE_BUILD_TYPE NANOMOE_NATIVE CMAKE_C_COMPILER CMAKE_C_FLAGS; do
  val=$(cached $var)
  [ -n "$val" ] && like+=("-D$var=$val")
done

# -DNANOMOE_MPI=mpich picks the same three programs; the explicit ones keep this
# working with a CMakeLists.txt that does not know the option
t0=$(date +%s)
if ! cmake -S "$repo" -B "$build" -DNANOMOE_MPI=mpich -DMPI_C_COMPILER=/usr/bin/mpicc.mpich \
    -DMPIEXEC_EXECUTABLE=/usr/bin/mpiexec.mpich -DHDF5_C_COMPILER_EXECUTABLE=/usr/bin/h5pcc.mpich "${like[@]}" \
    >"$work/configure.log" 2>&1; then
  cat "$work/configure.log"
  bad "configure against MPICH failed"
  exit 1
fi
if ! cmake --build "$build" -j2 --target nanomoe >"$work/build.log" 2>&1; then
  cat "$work/build.log"
  bad "build against MPICH failed"
  exit 1
fi
bin=$build/nanomoe
ok "configured and built nanomoe against MPICH in $(($(date +%s) - t0)) s (${like[*]})"

links() { case " $1" in *" $2"*) return 0 ;; esac; return 1; } # links "LDD NAMES" NAME
libs=$(ldd "$bin" | awk '{ print $1 }' | tr '\n' ' ')
if links "$libs" libmpich.so. && links "$libs" libhdf5_mpich.so. && ! links "$libs" libmpi.so. \
    && ! links "$libs" libhdf5_openmpi.so. && ! links "$libs" libopen-pal.so.; then
  ok "MPICH build links libmpich and libhdf5_mpich, no Open MPI library"
else
  bad "MPICH build: not libmpich and libhdf5_mpich alone: $libs"
fi
olibs=$(ldd "$ompi_bin" | awk '{ print $1 }' | tr '\n' ' ')
links "$olibs" libmpi.so. && ! links "$olibs" libmpich.so. && ! links "$olibs" libhdf5_mpich.so. \
  || bad "$ompi_bin is not an Open MPI build: $olibs"

nm_test_text "$work/text.txt" 13
run() { # run OUT COMMAND... : 20 steps of tiny.ini into $work/OUT, log in $work/OUT.log
  local out=$1
  shift
  timeout -k 10 300 "$@" train "$repo/configs/tiny.ini" data="$work/text.txt" out_dir="$work/$out" \
    max_iters=20 log_interval=1 eval_interval=0 >"$work/$out.log" 2>&1 || { cat "$work/$out.log"; bad "$out run failed"; exit 1; }
}
# -launcher fork: start both ranks here even inside a Slurm allocation
run mpich2 /usr/bin/mpiexec.mpich -launcher fork -n 2 "$bin"
run ompi2 "$ompi_mpiexec" -n 2 --oversubscribe "$ompi_bin"
run ompi1 "$ompi_bin"
ckpt=ckpt_00000020.h5
# a launcher of the wrong MPI starts 2 independent 1-rank runs: the log says
grep -q "^ranks: 2 x" "$work/mpich2.log" && ok "MPICH run trained on 2 ranks" || bad "MPICH run was not one 2-rank job: $(grep '^ranks:' "$work/mpich2.log")"
grep -q "^ranks: 2 x" "$work/ompi2.log" || bad "Open MPI run was not one 2-rank job: $(grep '^ranks:' "$work/ompi2.log")"
[ -f "$work/mpich2/$ckpt" ] && [ "$(grep -c '^train,' "$work/mpich2/metrics.csv")" = 20 ] \
  && ok "MPICH run wrote 20 steps to metrics.csv and $ckpt" || bad "MPICH run: no $ckpt or not 20 steps in metrics.csv"

compare_losses() { # compare_losses A B TOL -> prints the worst relative difference
  awk -F, -v tol="$3" 'NR == FNR { if ($1 == "train") a[$2] = $3; next }
       $1 == "train" { n++; d = a[$2] - $3; if (d < 0) d = -d; r = d / a[$2]; if (r > w) w = r }
       END { printf "%d steps, worst relative loss difference %.3g", n, w; exit !(n == 20 && w <= tol) }' \
    "$work/$1/metrics.csv" "$work/$2/metrics.csv"
}
compare() { # compare OTHER WHAT
  local msg
  msg=$(compare_losses "$1" mpich2 0) && ok "MPICH 2 ranks vs $2: losses identical to the printed digit" || bad "MPICH 2 ranks vs $2: $msg"
  msg=$($py "$repo/tools/compare_ckpt.py" "$work/$1/$ckpt" "$work/mpich2/$ckpt" --optimizer --quiet --tol 0) \
    && ok "MPICH 2 ranks vs $2: checkpoints bit-identical" || bad "MPICH 2 ranks vs $2: checkpoints not bit-identical: ${msg##*$'\n'}"
}
compare ompi2 "Open MPI 2 ranks"
compare ompi1 "Open MPI 1 rank (rank-count invariance, as ranks.sh)"

# the MPICH checkpoint evaluates on 2 MPICH ranks as on 1 Open MPI rank
ref=$(timeout -k 10 120 "$ompi_bin" eval "$work/mpich2/$ckpt" --data "$work/text.txt" 2>&1)
got=$(timeout -k 10 120 /usr/bin/mpiexec.mpich -launcher fork -n 2 "$bin" eval "$work/mpich2/$ckpt" --data "$work/text.txt" 2>&1)
[ -n "$ref" ] && [ "$got" = "$ref" ] && ok "MPICH checkpoint evaluates the same on 2 MPICH ranks and 1 Open MPI rank: $got" \
  || bad "eval: Open MPI 1 rank '$ref', MPICH 2 ranks '$got'"
exit $fail
