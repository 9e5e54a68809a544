#!/usr/bin/env bash
# Exact resume, resume on other rank counts, crash safety, signals, run.h5
# statistics and `nanomoe inspect`, on configs/tiny.ini with its own text.
# usage: resume.sh NANOMOE MPIEXEC REPO
set -u
source "$(dirname "$0")/lib.sh"
bin=$1 mpiexec=$2 repo=$3
py=/usr/bin/python3
nm_test_workdir
export OMP_NUM_THREADS=1 OMPI_MCA_pml=${OMPI_MCA_pml:-ob1}
cd "$work"
nm_test_text text.txt 11
common=(data="$work/text.txt" log_interval=1 eval_interval=10 stats_interval=5)

train() { # train NP OUT [key=value...]: exit status of the run; log in OUT.log
  local np=$1 out=$2
  shift 2
  "$mpiexec" -n "$np" --oversubscribe "$bin" train "$repo/configs/tiny.ini" "${common[@]}" out_dir="$work/$out" "$@" \
    >>"$work/$out.log" 2>&1
}
losses() { grep '^train,' "$work/$1/metrics.csv" | cut -d, -f2-5; } # step,loss,ce,aux
same_ckpt() { $py "$repo/tools/compare_ckpt.py" "$1" "$2" --optimizer --quiet --tol "${3:-0}"; }
runh5_same() { # run.h5 files equal but for the run id, timing and per-rank counts
  h5diff --exclude-attribute / --exclude-path /metrics/tokens_per_s --exclude-path /routing/blocks/0/tokens_per_rank \
    --exclude-path /routing/blocks/1/tokens_per_rank "$1" "$2" >/dev/null
}

# ---- exact resume on the same rank count: 40 steps straight vs 20 + resume 20
for np in 1 2; do
  train $np straight$np max_iters=40 || bad "straight run on $np ranks failed"
  train $np split$np max_iters=20 || bad "first half on $np ranks failed"
  train $np split$np max_iters=40 resume=auto || bad "resumed half on $np ranks failed"
  grep -q "resuming from .*ckpt_00000020.h5 at step 20" "$work/split$np.log" && ok "$np ranks: resume=auto found step 20" \
    || bad "$np ranks: no resume message"
  [ "$(losses straight$np)" = "$(losses split$np)" ] && ok "$np ranks: 20 + resume 20 logs the losses of 40 straight, bit for bit" \
    || bad "$np ranks: resumed losses differ"
  msg=$(same_ckpt "$work/straight$np/ckpt_00000040.h5" "$work/split$np/ckpt_00000040.h5") \
    && ok "$np ranks: final checkpoints bit-identical" || bad "$np ranks: final checkpoints differ: $msg"
  runh5_same "$work/straight$np/run.h5" "$work/split$np/run.h5" && ok "$np ranks: run.h5 continued exactly" \
    || bad "$np ranks: run.h5 of the resumed run differs"
done

# ---- resume across rank counts and expert_parallel sizes: 4 -> 2 -> 1 -> 4 (ep 2: replicas)
train 4 hop max_iters=10 || bad "hop: 4 ranks failed"
train 2 hop max_iters=20 resume=auto expert_parallel=1 || bad "hop: 2 ranks (expert_parallel=1) failed"
train 1 hop max_iters=30 resume=auto || bad "hop: 1 rank failed"
train 4 hop max_iters=40 resume=auto expert_parallel=2 || bad "hop: 4 ranks (expert_parallel=2) failed"
# loss, ce and aux of every step against the uninterrupted run. Replicated
# experts (expert_parallel=1 on 2 ranks, 2 on 4) sum their gradients across
# replicas in another order: float rounding, observed in the 7th digit of aux;
# 1e-4 relative leaves room without hiding a wrong restored state
worst=$(paste -d, <(losses straight1) <(losses hop) | awk -F, '{ for (i = 2; i <= 4; i++) { d = $i - $(i + 4); if (d < 0) d = -d; r = d / $i; if (r > w) w = r } } END { printf "%.3g", w }')
n=$(losses hop | wc -l)
awk -v w="$worst" -v n="$n" 'BEGIN { exit !(w <= 1e-4 && n == 40) }' \
  && ok "4 -> 2 -> 1 -> 4 ranks (expert_parallel 4, 1, 1, 2): loss, ce, aux of all 40 steps within 1e-4 relative of the uninterrupted run (worst $worst)" \
  || bad "4 -> 2 -> 1 -> 4 ranks: $n steps, worst relative difference $worst"

# ---- configuration checks on resume
train 1 straight1 max_iters=40 resume=auto d_model=48 n_heads=2
grep -q "d_model=48 in this run's config but d_model=32 in checkpoint" "$work/straight1.log" \
  && ok "resume with another d_model names the key and both values" || bad "no d_model mismatch message"
if train 1 nowhere max_iters=5 resume="$work/nope/ckpt_00000005.h5"; then bad "resume=PATH to a missing file exited 0"
else grep -q "nope/ckpt_00000005.h5" "$work/nowhere.log" && ok "resume=PATH to a missing file fails and names it" || bad "resume=PATH message"; fi
train 1 fresh max_iters=3 resume=auto && grep -q "no valid checkpoint" "$work/fresh.log" \
  && ok "resume=auto without checkpoints starts a new run" || bad "resume=auto in an empty out_dir"
train 1 seedchange max_iters=3 && train 1 seedchange max_iters=5 resume=auto seed=99 \
  && grep -q "seed changes from 1234 (checkpoint) to 99" "$work/seedchange.log" && ok "resume warns when seed changes" \
  || bad "no warning for a changed seed"

# ---- keep_last
train 1 keep max_iters=20 ckpt_interval=4 keep_last=2 || bad "keep_last run failed"
[ "$(cd keep && ls ckpt_*.h5 | tr '\n' ' ')" = "ckpt_00000016.h5 ckpt_00000020.h5 " ] && ok "keep_last=2 keeps the two newest" \
  || bad "keep_last=2 left: $(cd keep && ls ckpt_*.h5 | tr '\n' ' ')"

# ---- killed between the complete temporary file and the rename
train 1 crash max_iters=10 || bad "crash: first run failed"
if NANOMOE_FAULT=kill-before-rename train 1 crash max_iters=20 resume=auto; then bad "the fault hook did not kill the run"; fi
[ -f crash/ckpt_00000020.h5.tmp ] && [ ! -f crash/ckpt_00000020.h5 ] && ok "killed before the rename: only the .tmp exists" \
  || bad "killed before the rename: $(ls crash | tr '\n' ' ')"
train 1 crash max_iters=20 resume=auto && grep -q "resuming from .*ckpt_00000010.h5" crash.log \
  && ok "resume=auto after the kill ignores the .tmp and resumes from step 10" || bad "resume after kill-before-rename"
msg=$(same_ckpt "$work/straight1/ckpt_00000040.h5" "$work/straight1/ckpt_00000040.h5") # sanity of the tool
train 1 ref20 max_iters=20 && msg=$(same_ckpt "$work/ref20/ckpt_00000020.h5" "$work/crash/ckpt_00000020.h5") \
  && ok "the run recovered from the kill ends bit-identical to an uninterrupted one" || bad "recovered run differs: $msg"

# ---- killed at random moments (SIGKILL to all ranks, then to one rank), checkpoint every step
for trial in 1 2 3; do
  ( "$mpiexec" -n 2 --oversubscribe "$bin" train "$repo/configs/tiny.ini" "${common[@]}" out_dir="$work/rand" \
      max_iters=400 ckpt_interval=1 resume=auto >>rand.log 2>&1 & echo $! >rand.pid; wait ) &
  sleep "0.$((RANDOM % 7 + 3))"
  mp=$(cat rand.pid)
  if [ $trial -eq 2 ]; then pkill -KILL -P "$mp" -n; sleep 0.5; kill -KILL "$mp" 2>/dev/null; else pkill -KILL -P "$mp"; kill -KILL "$mp" 2>/dev/null; fi
  wait
done
train 2 rand max_iters=400 ckpt_interval=0 resume=auto
rc=$?
last=$(tail -n 1 rand/metrics.csv | cut -d, -f2)
[ $rc -eq 0 ] && [ "$last" = 400 ] && ok "after 3 random SIGKILLs resume=auto finishes the run" || bad "random kills: rc $rc, last step $last"
grep -q "ignoring checkpoint\|resuming from" rand.log && ok "random kills: every restart resumed or skipped incomplete files" || bad "random kills: no resume"

# ---- signals: SIGUSR1 to mpirun, SIGTERM to every rank: checkpoint and exit 0
for sig in USR1 TERM; do
  "$mpiexec" -n 2 --oversubscribe "$bin" train "$repo/configs/tiny.ini" "${common[@]}" out_dir="$work/sig$sig" \
    max_iters=100000 >"sig$sig.log" 2>&1 &
  mp=$!
  for i in $(seq 100); do [ -s "sig$sig/metrics.csv" ] && [ "$(wc -l <"sig$sig/metrics.csv")" -gt 20 ] && break; sleep 0.1; done
  if [ $sig = USR1 ]; then kill -USR1 $mp; else pkill -TERM -P $mp; fi
  wait $mp
  rc=$?
  step=$(grep -o 'stopping after step [0-9]*' "sig$sig.log" | grep -o '[0-9]*$')
  [ $rc -eq 0 ] && [ -n "$step" ] && [ -f "$(printf 'sig%s/ckpt_%08d.h5' $sig "$step")" ] \
    && ok "SIG$sig ($([ $sig = USR1 ] && echo to mpirun || echo to every rank)): stopped after step $step, checkpoint written, exit 0" \
    || bad "SIG$sig: rc $rc, step '$step', files: $(ls sig$sig | tr '\n' ' ')"
  if [ -n "$step" ] && [ $((step % 10)) -ne 0 ]; then
    grep -q "^eval step $step " "sig$sig.log" && bad "SIG$sig: an evaluation ran before the stop checkpoint"       || ok "SIG$sig: no evaluation at the unscheduled stop step $step"
  fi
  $py -c 'import h5py, sys; sys.exit(int(sys.argv[2]) not in list(h5py.File(sys.argv[1], "r")["routing/step"][...]))' \
    "sig$sig/run.h5" "${step:-0}" && ok "SIG$sig: run.h5 has a row at the stop step" || bad "SIG$sig: no run.h5 row at step $step"
done

# ---- corrupt checkpoints: resume=auto falls back, resume=PATH, eval and inspect name the file
train 1 corrupt max_iters=10 ckpt_interval=5 || bad "corrupt: run failed"
cp corrupt/ckpt_00000010.h5 full.h5
head -c 20000 full.h5 >corrupt/ckpt_00000010.h5
train 1 corrupt max_iters=12 resume=auto && grep -q "ignoring checkpoint .*ckpt_00000010.h5" corrupt.log \
  && grep -q "resuming from .*ckpt_00000005.h5" corrupt.log && ok "a truncated newest checkpoint is skipped with a warning" \
  || bad "resume=auto over a truncated checkpoint"
cp full.h5 trunc.h5 && truncate -s 30000 trunc.h5 && sum=$(sha256sum trunc.h5)
for cmd in "eval trunc.h5" "inspect trunc.h5"; do
  out=$("$bin" $cmd 2>&1) && bad "$cmd of a truncated file exited 0" || {
    echo "$out" | grep -q "trunc.h5" && ok "$cmd of a truncated file fails naming it" || bad "$cmd: $out"; }
done
train 1 tr max_iters=20 resume="$work/trunc.h5" && bad "resume=PATH of a truncated file exited 0" \
  || { grep -q "trunc.h5" tr.log && ok "resume=PATH of a truncated file fails naming it" || bad "resume=PATH truncated: $(tail -2 tr.log)"; }
[ "$(sha256sum trunc.h5)" = "$sum" ] && ok "the truncated file is left as it was" || bad "truncated file modified"
$py - full.h5 <<'EOF'
import h5py, shutil, sys
src = sys.argv[1]
for name, edit in [("badformat.h5", lambda f: f.attrs.__setitem__("format", "something-else")),
                   ("missing.h5", lambda f: f.__delitem__("params/blocks/1/ln2/bias")),
                   ("shape.h5", lambda f: (f.__delitem__("params/head/bias"), f.create_dataset("params/head/bias", data=[0.0] * 3, dtype="f4")))]:
    shutil.copy(src, name)
    with h5py.File(name, "r+") as f:
        edit(f)
EOF
for c in "badformat.h5:something-else" "missing.h5:/params/blocks/1/ln2/bias" "shape.h5:/params/head/bias"; do
  file=${c%%:*} what=${c#*:}
  out=$("$bin" inspect "$file" 2>&1) && bad "inspect $file exited 0" || {
    echo "$out" | grep -q -- "$what" && ok "inspect $file fails naming $what" || bad "inspect $file: $out"; }
  train 1 "r_$file" max_iters=20 resume="$work/$file" && bad "resume=$file exited 0" || {
    grep -q -- "$what" "r_$file.log" && ok "resume=$file fails naming $what" || bad "resume=$file: $(tail -1 "r_$file.log")"; }
done

# ---- run.h5: counts add up, the same file at any rank count, inspect reads it
$py - "$work/straight1/run.h5" <<'EOF' && ok "run.h5: tokens_per_expert sums to tokens x top_k per interval, top1 to tokens" || bad "run.h5 sums"
import h5py, numpy as np, sys
with h5py.File(sys.argv[1], "r") as f:
    steps = f["routing/step"][...]
    assert list(steps) == list(range(5, 41, 5)), steps
    tokens = 8 * 32 * 5  # batch x block x steps per interval
    for i in range(2):
        b = f[f"routing/blocks/{i}"]
        assert (b["tokens_per_expert"][...].sum(axis=1) == tokens * 2).all()
        assert (b["top1_per_expert"][...].sum(axis=1) == tokens).all()
        assert (b["tokens_per_rank"][...].sum(axis=1) == tokens * 2).all()
        assert (b["token_expert_interval"][...].sum(axis=(1, 2)) == tokens).all()
        assert (b["token_expert"][...] == b["token_expert_interval"][...].sum(axis=0)).all()
        assert (b["dropped"][...] == 0).all()
        e = b["router_entropy"][...]
        assert ((e > 0) & (e <= np.log(4) + 1e-9)).all(), e
    # evaluations at steps 1, 10, 20, 30, 40 land in the rows of steps 5, 10, 20, 30, 40
    v = f["metrics/val_loss"][...]
    assert np.isnan(v).sum() == 3 and np.isfinite(v[[0, 1, 3, 5, 7]]).all(), v
EOF
train 4 four max_iters=40 || bad "4-rank run failed"
runh5_same "$work/straight1/run.h5" "$work/four/run.h5" && runh5_same "$work/straight1/run.h5" "$work/straight2/run.h5" \
  && ok "run.h5 identical at 1, 2 and 4 ranks except tokens_per_rank (and timing)" || bad "run.h5 differs across rank counts"
out=$("$bin" inspect four/run.h5) && echo "$out" | grep -q "steps 5 .. 40" && ok "inspect reads a run.h5 of 4 ranks" || bad "inspect run.h5: $out"
out=$("$bin" inspect four/ckpt_00000040.h5) && echo "$out" | grep -q "schema: ok" && ok "inspect validates a checkpoint of 4 ranks" || bad "inspect ckpt: $out"
# ---- run identity: resume=auto continues the newest run, keep_last prunes only it, --force moves aside
runid() { $py -c 'import h5py, sys; print(h5py.File(sys.argv[1], "r").attrs.get("run_id", ""))' "$1"; }
train 1 idA max_iters=10 ckpt_interval=5 || bad "run A failed"
sleep 1 # run ids begin with their start second
train 1 idB max_iters=4 ckpt_interval=2 seed=77 || bad "run B failed"
a=$(runid idA/ckpt_00000010.h5) b=$(runid idB/ckpt_00000004.h5)
[[ $a =~ ^[0-9]{8}T[0-9]{6}Z-[0-9a-f]{16}$ && $b > $a ]] && ok "checkpoints carry run ids that sort by start time ($a < $b)" \
  || bad "run ids '$a', '$b'"
[ "$(runid idA/run.h5)" = "$a" ] && ok "run.h5 carries the run id" || bad "run.h5 run id '$(runid idA/run.h5)'"
"$bin" inspect idA/ckpt_00000010.h5 | grep -q "run id $a" && "$bin" inspect idA/run.h5 | grep -q "run id $a" \
  && ok "inspect shows the run id of a checkpoint and of run.h5" || bad "inspect does not show the run id"
cp idB/ckpt_00000002.h5 idB/ckpt_00000004.h5 idA/ # run B's files (lower steps, newer run) next to run A's
train 1 idA max_iters=6 ckpt_interval=2 keep_last=1 seed=77 resume=auto \
  && grep -q "resuming from .*idA/ckpt_00000004.h5 at step 4" idA.log \
  && ok "resume=auto continues the most recently started run, not the highest step" || bad "resume=auto picked: $(grep resuming idA.log | tail -1)"
[ "$(cd idA && ls ckpt_*.h5 | tr '\n' ' ')" = "ckpt_00000005.h5 ckpt_00000006.h5 ckpt_00000010.h5 " ] \
  && [ "$(runid idA/ckpt_00000006.h5)" = "$b" ] && ok "keep_last prunes only the continued run's checkpoints" \
  || bad "after keep_last=1: $(cd idA && ls ckpt_*.h5 | tr '\n' ' ')"
grep -q "run.h5 belongs to another run" idA.log && [ -f idA/run.h5.before-step-4 ] \
  && ok "another run's run.h5 is kept aside, not continued" || bad "run.h5 of run A was not set aside"
touch idA/ckpt_00000099.h5.tmp
train 1 idA max_iters=8 ckpt_interval=2 seed=77 resume=auto && [ ! -e idA/ckpt_00000099.h5.tmp ] \
  && grep -q "removed .*ckpt_00000099.h5.tmp" idA.log && ok "a stale .tmp is removed at the next checkpoint" \
  || bad "stale .tmp: $(ls idA | tr '\n' ' ')"
if "$bin" train "$repo/configs/tiny.ini" "${common[@]}" out_dir="$work/idA" resume=auto --force >force.log 2>&1; then
  bad "--force with resume=auto exited 0"
else grep -q "cannot be combined with resume=auto" force.log && ok "--force with resume=auto is refused" || bad "--force+resume: $(cat force.log)"; fi
before=$(cd idA && ls | sort | tr '\n' ' ')
train 1 idA max_iters=3 --force || bad "--force run failed"
moved=$(ls -d idA/replaced/*/ 2>/dev/null | head -1)
[ -n "$moved" ] && [ "$(cd "$moved" && ls | sort | tr '\n' ' ')" = "$before" ] && grep -q "moved the previous run's files to" idA.log \
  && ok "--force moves every file of the previous run into $(basename "$moved")/, nothing deleted" \
  || bad "--force: before '$before', moved '$(ls "$moved" 2>/dev/null | tr '\n' ' ')'"
[ "$(cd idA && ls ckpt_*.h5 | tr '\n' ' ')" = "ckpt_00000003.h5 " ] && train 1 idA max_iters=5 resume=auto \
  && grep -q "resuming from .*idA/ckpt_00000003.h5 at step 3" idA.log \
  && ok "after --force, resume=auto continues the new run only" || bad "after --force: $(ls idA | tr '\n' ' ')"

# ---- a crash between checkpoints: with ckpt_interval 15 and stats_interval 10 a row is
# written with every checkpoint, so the resumed run.h5 equals the uninterrupted one
train 1 rowsA max_iters=40 ckpt_interval=15 stats_interval=10 || bad "rowsA failed"
NANOMOE_FAULT=kill-at-step=25 train 1 rowsB max_iters=40 ckpt_interval=15 stats_interval=10 && bad "kill-at-step did not kill"
train 1 rowsB max_iters=40 ckpt_interval=15 stats_interval=10 resume=auto && grep -q "resuming from .*ckpt_00000015.h5" rowsB.log \
  && runh5_same rowsA/run.h5 rowsB/run.h5 && ok "killed at step 25, resumed from step 15: run.h5 equals the uninterrupted run's" \
  || bad "run.h5 after a crash between checkpoints differs: $(h5diff --exclude-attribute / rowsA/run.h5 rowsB/run.h5 | head -3)"

exit $fail
