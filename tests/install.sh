#!/usr/bin/env bash
# The library as users get it: `cmake --install` into a temporary prefix, then
# a program that includes only <nanomoe/nanomoe.h> built against it twice,
# through pkg-config and through find_package(nanomoe), and run; then the
# error paths of every public function under AddressSanitizer/LeakSanitizer.
# usage: install.sh BUILD_DIR REPO
set -u
source "$(dirname "$0")/lib.sh"
build=$1 repo=$2
nm_test_workdir
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
prefix=$work/prefix
cmake --install "$build" --prefix "$prefix" >"$work/install.log" 2>&1 && ok "cmake --install into $prefix" || { cat "$work/install.log"; bad "cmake --install"; exit 1; }
for f in bin/nanomoe include/nanomoe/nanomoe.h lib/libnanomoe.so lib/libnanomoe.a lib/pkgconfig/nanomoe.pc \
         lib/cmake/nanomoe/nanomoeConfig.cmake; do
  [ -e "$prefix/$f" ] || bad "missing $f"
done
! grep -q '#include <mpi.h>\|#include "mpi.h"' "$prefix"/include/nanomoe/*.h && ok "public headers need no MPI header" || bad "a public header includes mpi.h"
nm_test_text "$work/text.txt" 3 12000

# pkg-config
export PKG_CONFIG_PATH=$prefix/lib/pkgconfig
if cc -std=c11 -Wall -Wextra -o "$work/example_pc" "$repo/tests/api/example.c" $(pkg-config --cflags --libs nanomoe) -lm \
     -Wl,-rpath,"$prefix/lib" 2>"$work/cc.log"; then ok "example builds with pkg-config --cflags --libs nanomoe"
else cat "$work/cc.log"; bad "example does not build with pkg-config"; fi
mkdir -p "$work/out1"
"$work/example_pc" "$work/text.txt" "$work/out1" >"$work/ex1.log" 2>&1 && ok "example (pkg-config build) passes: $(grep -E '^(untrained|training)' "$work/ex1.log" | tr '\n' ';')" \
  || { cat "$work/ex1.log"; bad "example (pkg-config build) failed"; }

# find_package
if cmake -S "$repo/tests/api" -B "$work/consumer" -DCMAKE_PREFIX_PATH="$prefix" >"$work/cm.log" 2>&1 \
   && cmake --build "$work/consumer" >>"$work/cm.log" 2>&1; then ok "example builds with find_package(nanomoe) and nanomoe::nanomoe"
else cat "$work/cm.log"; bad "find_package build failed"; fi
mkdir -p "$work/out2"
"$work/consumer/example" "$work/text.txt" "$work/out2" >"$work/ex2.log" 2>&1 && ok "example (find_package build) passes" \
  || { cat "$work/ex2.log"; bad "example (find_package build) failed"; }

# every public function's error path, under ASan/LSan (leaks inside MPI, HDF5
# and OpenBLAS themselves are suppressed; a leak in libnanomoe is not)
cat >"$work/lsan.supp" <<'SUPP'
leak:libmpi.so
leak:libopen-pal.so
leak:libopen-rte.so
leak:libhwloc.so
leak:libpmix.so
leak:libevent
leak:libhdf5
leak:libopenblas
leak:libgomp
leak:mca_
leak:libc.so
leak:ld-linux
SUPP
mkdir -p "$work/err"
if cc -std=c11 -g -rdynamic -fsanitize=address -fno-omit-frame-pointer -o "$work/errors" "$repo/tests/api/errors.c" \
     $(pkg-config --cflags --libs nanomoe) -Wl,-rpath,"$prefix/lib" 2>"$work/cc2.log"; then
  ASAN_OPTIONS=detect_leaks=1 LSAN_OPTIONS=suppressions="$work/lsan.supp":print_suppressions=0 \
    "$work/errors" "$work/err" >"$work/errors.log" 2>&1
  rc=$?
  tail -n 1 "$work/errors.log"
  [ $rc -eq 0 ] && ok "every public function's error path returns an error with a message, no abort, no leak" \
    || { grep -v '^ok - ' "$work/errors.log" | head -60; bad "error paths (exit $rc)"; }
else cat "$work/cc2.log"; bad "errors.c does not build"; fi
exit $fail
