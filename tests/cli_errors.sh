#!/usr/bin/env bash
# Error paths of the nanomoe command line.
#
# usage: cli_errors.sh /path/to/nanomoe
#
# Every bad-input case checks that
#   (1) the exit status is non-zero (and not a signal),
#   (2) stderr holds a message naming the bad value / key / file / character,
#   (3) nothing partial is left behind: no new ckpt_*.h5, no *.tmp, and every
#       file that existed before (checkpoints, config.ini, metrics.csv, the
#       HDF5 fixtures) is byte-identical (sha256).
# Positive checks: every --help, a short good train run and its out_dir,
# eval and sample on the resulting checkpoint.
#
# Works in a fresh mktemp -d directory (removed on exit) with its own generated
# text; needs /usr/bin/python3 with h5py for the malformed-checkpoint fixtures.
# Prints "ok - ..." / "not ok - ..." per case and a summary; exits 1 if any
# case fails.
set -u

if [ $# -ne 1 ]; then
    echo "usage: $0 /path/to/nanomoe" >&2
    exit 2
fi
BIN=$1
case $BIN in /*) ;; *) BIN=$PWD/$BIN ;; esac
if [ ! -x "$BIN" ]; then
    echo "not an executable: $BIN" >&2
    exit 2
fi
PY=/usr/bin/python3

# One MPI rank without a launcher; Open MPI refuses root without these.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
# One rank needs no network transport; probing them costs ~0.2 s per start.
export OMPI_MCA_pml=${OMPI_MCA_pml:-ob1}

W=$(mktemp -d "${TMPDIR:-/tmp}/nanomoe_cli_errors.XXXXXX") || exit 2
trap 'rm -rf "$W"' EXIT
cd "$W" || exit 2
mkdir logs

TIMEOUT=()
command -v timeout >/dev/null 2>&1 && TIMEOUT=(timeout 60)

PASS=0
FAIL=0
FAILED=()

# ---------------------------------------------------------------- helpers

# run CMD...: runs with stdout/stderr captured in logs/, exit status in RC.
run() {
    "${TIMEOUT[@]}" "$@" >"$W/logs/stdout" 2>"$W/logs/stderr" </dev/null
    RC=$?
}

# Every ckpt_*.h5 and *.tmp under $W (sorted), to detect new ones.
artifacts() {
    find "$W" \( -name 'ckpt_*.h5' -o -name '*.tmp' -o -name '*.h5.tmp*' \) -print | LC_ALL=C sort
}

# Files that must never change: recorded once the fixtures exist.
protect() {
    local f
    : >"$W/logs/manifest"
    for f in "$@"; do
        [ -f "$f" ] && sha256sum "$f" >>"$W/logs/manifest"
    done
}

report() { # report NAME [REASON...]
    local name=$1
    shift
    if [ $# -eq 0 ]; then
        echo "ok - $name"
        PASS=$((PASS + 1))
    else
        local msg=$1 r
        shift
        for r in "$@"; do msg+="; $r"; done
        echo "not ok - $name: $msg"
        FAIL=$((FAIL + 1))
        FAILED+=("$name")
        echo "#   command exit status: $RC"
        sed -e 's/^/#   stderr: /' "$W/logs/stderr" | head -n 15
        sed -e 's/^/#   stdout: /' "$W/logs/stdout" | head -n 5
    fi
}

# expect_fail NAME SUBSTRING... -- CMD...
# The command must fail, print every SUBSTRING on stderr and leave nothing behind.
expect_fail() {
    local name=$1
    shift
    local subs=()
    while [ $# -gt 0 ] && [ "$1" != "--" ]; do
        subs+=("$1")
        shift
    done
    shift # --
    rm -rf "$W/out"
    local before after s
    before=$(artifacts)
    run "$@"
    local why=()
    if [ "$RC" -eq 0 ]; then
        why+=("exit status 0 on bad input")
    elif [ "$RC" -eq 124 ] && [ ${#TIMEOUT[@]} -gt 0 ]; then
        why+=("timed out")
    elif [ "$RC" -ge 128 ]; then
        why+=("killed by signal $((RC - 128))")
    fi
    for s in "${subs[@]}"; do
        grep -qF -e "$s" "$W/logs/stderr" || why+=("stderr does not contain \"$s\"")
    done
    grep -q 'HDF5-DIAG\|MPI_ABORT\|Segmentation\|Aborted\|out of memory' "$W/logs/stderr" &&
        why+=("stderr holds a crash / internal diagnostic")
    after=$(artifacts)
    if [ "$before" != "$after" ]; then
        why+=("left files behind: $(comm -13 <(echo "$before") <(echo "$after") | tr '\n' ' ')")
    fi
    if [ -s "$W/logs/manifest" ] && ! sha256sum -c --quiet "$W/logs/manifest" >"$W/logs/cmp" 2>&1; then
        why+=("pre-existing file changed: $(tr '\n' ' ' <"$W/logs/cmp")")
    fi
    report "$name" "${why[@]}"
    rm -rf "$W/out"
}

# expect_help CMD-WORDS... : exit 0 and the usage line on stdout.
expect_help() {
    local usage=$1
    shift
    run "$BIN" "$@"
    local why=()
    [ "$RC" -eq 0 ] || why+=("exit status $RC")
    grep -qF -e "$usage" "$W/logs/stdout" || why+=("stdout does not contain \"$usage\"")
    report "nanomoe $* exits 0 and prints '$usage'" "${why[@]}"
}

# ---------------------------------------------------------------- inputs

# A few tens of KB of English-like text from a fixed word list (plain ASCII:
# no '~', no accented letters), deterministic.
WORDS=(the a an and but or of to in on at by with from over under after before
    quick slow brown green old young small large quiet bright dark cold warm
    fox dog river hill boat child man woman house garden road city tree stone
    runs jumps walks sleeps watches sings carries finds keeps turns opens waits
    slowly quickly softly never always often again here there today tomorrow
    night morning summer winter water light wind rain bird field door window
    says thinks knows wants gives takes makes sees hears leaves comes goes)
gen_text() {
    local n=${#WORDS[@]} seed=12345 i=0 len w sent out=()
    for ((s = 0; s < 700; s++)); do
        seed=$(((seed * 1103515245 + 12345) % 2147483648))
        len=$((4 + (seed >> 8) % 10))
        sent=""
        for ((i = 0; i < len; i++)); do
            seed=$(((seed * 1103515245 + 12345) % 2147483648))
            w=${WORDS[$(((seed >> 8) % n))]}
            [ $i -eq 0 ] && w=${w^}
            [ $i -gt 0 ] && [ $(((seed >> 4) % 9)) -eq 0 ] && w="$w,"
            sent+="${sent:+ }$w"
        done
        case $(((seed >> 12) % 6)) in 0) sent+="!" ;; 1) sent+="?" ;; *) sent+="." ;; esac
        out+=("$sent")
        [ $((s % 4)) -eq 3 ] && out+=($'\n')
    done
    local IFS=' '
    printf '%s\n' "${out[*]}"
}
gen_text >text.txt
head -c 200 text.txt >short.txt # < 10 * (block_size + 2) characters
: >empty.txt
mkdir cfgdir

# The tiny model of configs/tiny.ini, on our own text.
cat >tiny.ini <<EOF
; tiny model for the CLI error tests
[model]
d_model = 32
n_layers = 2
n_heads = 2
d_ff = 64
n_experts = 4
top_k = 2
block_size = 32
dropout_rate = 0.1
aux_loss_coeff = 0.01

[training]
learning_rate = 2e-3
weight_decay = 0.1
batch_size = 8
max_iters = 2
eval_interval = 0
eval_iters = 2
seed = 1234

[run]
data = $W/text.txt
out_dir = $W/out
log_interval = 50
ckpt_interval = 0
EOF
# Broken configs: each is tiny.ini with one bad line added.
{ sed -n '1,3p' tiny.ini; echo "this line has no equals sign"; sed -n '4,$p' tiny.ini; } >syntax.ini
{ cat tiny.ini; echo "n_expert = 4"; } >unknown.ini
{ cat tiny.ini; echo "top_k ="; } >novalue.ini
{ cat tiny.ini; echo "d_model = 12x"; } >badint.ini
# A valid INI whose comment line is longer than 200 characters.
{ printf '; %s\n' "$(printf 'comment %.0s' $(seq 1 40))"; cat tiny.ini; } >longcomment.ini
# A value line longer than libinih's 200-byte buffer: refused, naming the line.
{ cat tiny.ini; printf 'data = /%s\n' "$(printf 'very/long/path/%.0s' $(seq 1 20))"; } >longvalue.ini
echo "not a checkpoint, just text" >notes.txt

echo "# nanomoe: $BIN"
echo "# work dir: $W ($(wc -c <text.txt) characters of text)"

# ---------------------------------------------------------------- help

expect_help "usage: nanomoe <command>" --help
expect_help "usage: nanomoe train CONFIG" train --help
expect_help "usage: nanomoe eval CKPT" eval --help
expect_help "usage: nanomoe sample CKPT" sample --help
expect_help "usage: nanomoe bench" bench --help

# ---------------------------------------------------------------- good run

run "$BIN" train tiny.ini max_iters=2 eval_interval=0 out_dir="$W/run"
why=()
[ "$RC" -eq 0 ] || why+=("exit status $RC")
listing=$(cd "$W/run" 2>/dev/null && LC_ALL=C ls -A | tr '\n' ' ')
[ "$listing" = "ckpt_00000002.h5 config.ini metrics.csv run.h5 " ] ||
    why+=("out_dir holds '$listing', expected 'ckpt_00000002.h5 config.ini metrics.csv run.h5 '")
report "train max_iters=2 exits 0 and leaves exactly ckpt_00000002.h5, config.ini, metrics.csv, run.h5" "${why[@]}"
CKPT=$W/run/ckpt_00000002.h5

run "$BIN" eval "$CKPT"
why=()
[ "$RC" -eq 0 ] || why+=("exit status $RC")
grep -q '^ce [0-9.]* aux [0-9.]* loss [0-9.]* windows [0-9]* tokens [0-9]*$' "$W/logs/stdout" ||
    why+=("no 'ce ... windows ... tokens ...' line")
report "eval of the good checkpoint exits 0 and prints the loss line" "${why[@]}"

run "$BIN" sample "$CKPT" --prompt "The " --tokens 20 --seed 3
why=()
[ "$RC" -eq 0 ] || why+=("exit status $RC")
grep -q '^The ' "$W/logs/stdout" || why+=("stdout does not start with the prompt")
report "sample of the good checkpoint exits 0 and echoes the prompt" "${why[@]}"

run "$BIN" train longcomment.ini max_iters=1 out_dir="$W/longrun"
why=()
[ "$RC" -eq 0 ] || why+=("exit status $RC: a valid INI with a comment line longer than 200 characters is rejected")
report "train accepts a config with a comment line longer than 200 characters" "${why[@]}"
rm -rf "$W/longrun"

# ---------------------------------------------------------------- HDF5 fixtures

if ! "$PY" - "$CKPT" <<'EOF' >"$W/logs/py" 2>&1; then
import shutil, sys
import h5py
import numpy as np

good = sys.argv[1]
with h5py.File("other_format.h5", "w") as f:
    f.attrs["format"] = "something-else"
    f.attrs["format_version"] = 1
    f["data"] = np.arange(4, dtype=np.float32)

def variant(name, edit):
    shutil.copy(good, name)
    with h5py.File(name, "a") as f:
        edit(f)

def v2(f):
    f.attrs["format_version"] = np.int64(2)

def qkv(f):
    del f["params/blocks/0/attn/qkv/kernel"]
    f["params/blocks/0/attn/qkv/kernel"] = np.zeros((32, 48), np.float32)

def dff(f):
    f["config"].attrs["d_ff"] = np.int64(48)

def nobias(f):
    del f["params/head/bias"]

variant("version2.h5", v2)
variant("bad_shape.h5", qkv)
variant("bad_dff.h5", dff)
variant("no_head_bias.h5", nobias)
EOF
    echo "# could not build the HDF5 fixtures with $PY (h5py); their cases will fail:"
    sed -e 's/^#*/#   /' "$W/logs/py"
fi

cp "$CKPT" "$W/ckpt_copy.h5" # read by eval/sample below; must stay unchanged
protect "$CKPT" "$W/run/config.ini" "$W/run/metrics.csv" "$W/ckpt_copy.h5" other_format.h5 version2.h5 \
    bad_shape.h5 bad_dff.h5 no_head_bias.h5 text.txt tiny.ini

# ---------------------------------------------------------------- train: data

expect_fail "train: missing data file" \
    "nope.txt" "No such file" -- \
    "$BIN" train tiny.ini data="$W/nope.txt"
expect_fail "train: empty data file" \
    "$W/empty.txt" "empty" -- \
    "$BIN" train tiny.ini data="$W/empty.txt"
expect_fail "train: data shorter than one window per split" \
    "$W/short.txt" "200 characters" "block_size + 2 = 34" -- \
    "$BIN" train tiny.ini data="$W/short.txt"
expect_fail "train: data path is a directory" \
    "$W/cfgdir" -- \
    "$BIN" train tiny.ini data="$W/cfgdir"

# ---------------------------------------------------------------- train: config file

expect_fail "train: config file does not exist" \
    "$W/nonexistent.ini" "No such file" -- \
    "$BIN" train "$W/nonexistent.ini"
# With data= and a small model given on the command line, as a user might do.
expect_fail "train: config path is a directory" \
    "$W/cfgdir" -- \
    "$BIN" train "$W/cfgdir" data="$W/text.txt" out_dir="$W/out" max_iters=1 eval_interval=0 \
    d_model=32 n_heads=2 n_layers=1 d_ff=32 block_size=32 batch_size=2
expect_fail "train: INI value line longer than the parser's buffer" \
    "longvalue.ini:" "line longer than" -- \
    "$BIN" train longvalue.ini
expect_fail "train: INI line without '='" \
    "syntax.ini:4" "syntax error" -- \
    "$BIN" train syntax.ini
expect_fail "train: unknown key in the file (typo n_expert)" \
    "unknown.ini" "unknown config key 'n_expert'" "did you mean 'n_experts'" -- \
    "$BIN" train unknown.ini
expect_fail "train: missing value in the file (top_k =)" \
    "novalue.ini" "'top_k' has no value" -- \
    "$BIN" train novalue.ini
expect_fail "train: non-integer in the file (d_model = 12x)" \
    "badint.ini" "d_model=12x" "not an integer" -- \
    "$BIN" train badint.ini

# ---------------------------------------------------------------- train: command line

expect_fail "train: unknown key on the command line (typo n_expert)" \
    "unknown config key 'n_expert'" "did you mean 'n_experts'" -- \
    "$BIN" train tiny.ini n_expert=4
expect_fail "train: unknown key on the command line (no near key)" \
    "unknown config key 'frobnicate'" -- \
    "$BIN" train tiny.ini frobnicate=4
expect_fail "train: argument that is not key=value" \
    "expected key=value" "'bogus'" -- \
    "$BIN" train tiny.ini bogus
expect_fail "train: missing value (top_k=)" \
    "'top_k' has no value" -- \
    "$BIN" train tiny.ini top_k=
expect_fail "train: non-integer (d_model=12x)" \
    "d_model=12x" "not an integer" -- \
    "$BIN" train tiny.ini d_model=12x
expect_fail "train: out of range (dropout_rate=1.5)" \
    "dropout_rate=1.5" "out of range" -- \
    "$BIN" train tiny.ini dropout_rate=1.5
expect_fail "train: out of range (dropout_rate=1)" \
    "dropout_rate=1" "[0, 1)" -- \
    "$BIN" train tiny.ini dropout_rate=1
expect_fail "train: out of range (block_size=1)" \
    "block_size=1" "out of range" -- \
    "$BIN" train tiny.ini block_size=1
expect_fail "train: out of range (batch_size=0)" \
    "batch_size=0" "out of range" -- \
    "$BIN" train tiny.ini batch_size=0
expect_fail "train: bad string value (lr_schedule=fast)" \
    "lr_schedule=fast" -- \
    "$BIN" train tiny.ini lr_schedule=fast
expect_fail "train: top_k=5 with n_experts=4" \
    "top_k=5" "n_experts=4" -- \
    "$BIN" train tiny.ini top_k=5 n_experts=4
expect_fail "train: d_model=30 with n_heads=4" \
    "d_model=30" "n_heads=4" -- \
    "$BIN" train tiny.ini d_model=30 n_heads=4
expect_fail "train: vocab_size is not settable" \
    "vocab_size" "cannot be set" -- \
    "$BIN" train tiny.ini vocab_size=50
touch "$W/afile"
expect_fail "train: out_dir is a regular file" \
    "$W/afile" "not a directory" -- \
    "$BIN" train tiny.ini out_dir="$W/afile"
expect_fail "train: out_dir already holds a checkpoint, no --force (left byte-identical)" \
    "$W/run" "ckpt_00000002.h5" "--force" -- \
    "$BIN" train tiny.ini out_dir="$W/run"
expect_fail "train: without CONFIG" \
    "missing CONFIG" -- \
    "$BIN" train

# ---------------------------------------------------------------- eval / sample: checkpoints

for cmd in eval sample; do
    expect_fail "$cmd: checkpoint does not exist" \
        "$W/missing.h5" "No such file" -- \
        "$BIN" $cmd "$W/missing.h5"
    expect_fail "$cmd: checkpoint is a text file" \
        "$W/notes.txt" "not an HDF5 file" -- \
        "$BIN" $cmd "$W/notes.txt"
    expect_fail "$cmd: HDF5 file of another format" \
        "$W/other_format.h5" "something-else" -- \
        "$BIN" $cmd "$W/other_format.h5"
    expect_fail "$cmd: format_version 2" \
        "$W/version2.h5" "format_version 2" -- \
        "$BIN" $cmd "$W/version2.h5"
    expect_fail "$cmd: /params shape does not match /config (qkv kernel)" \
        "$W/bad_shape.h5" "/params/blocks/0/attn/qkv/kernel" "[32, 48]" -- \
        "$BIN" $cmd "$W/bad_shape.h5"
    expect_fail "$cmd: /config d_ff does not match /params" \
        "$W/bad_dff.h5" "/params/blocks/0/experts/fc1/kernel" -- \
        "$BIN" $cmd "$W/bad_dff.h5"
    expect_fail "$cmd: missing dataset /params/head/bias" \
        "$W/no_head_bias.h5" "/params/head/bias" -- \
        "$BIN" $cmd "$W/no_head_bias.h5"
    expect_fail "$cmd: without CKPT" \
        "expected one checkpoint" -- \
        "$BIN" $cmd
done

# ---------------------------------------------------------------- eval: data and options

{ printf 'The fox~ runs.\n'; head -c 2000 text.txt; } >tilde.txt
expect_fail "eval: --data with a character outside the vocabulary" \
    "$W/tilde.txt" "'~'" "offset 7" -- \
    "$BIN" eval "$W/ckpt_copy.h5" --data "$W/tilde.txt"
expect_fail "eval: --data too short for one validation window" \
    "$W/short.txt" "20 tokens" "block_size + 1 = 33" -- \
    "$BIN" eval "$W/ckpt_copy.h5" --data "$W/short.txt"
expect_fail "eval: --data does not exist" \
    "$W/nope.txt" "No such file" -- \
    "$BIN" eval "$W/ckpt_copy.h5" --data "$W/nope.txt"
expect_fail "eval: --batch 0" \
    "--batch 0" -- \
    "$BIN" eval "$W/ckpt_copy.h5" --batch 0

# ---------------------------------------------------------------- sample: prompt and options

expect_fail "sample: prompt character '~' outside the vocabulary" \
    "'~'" "offset 4" "not in the vocabulary" -- \
    "$BIN" sample "$W/ckpt_copy.h5" --prompt "The ~fox" --tokens 5
# A byte-level vocabulary: the message names the first byte of the UTF-8 'é'.
expect_fail "sample: prompt with UTF-8 e-acute outside the vocabulary" \
    "0xC3" "offset 4" "not in the vocabulary" -- \
    "$BIN" sample "$W/ckpt_copy.h5" --prompt "The "$'\xc3\xa9'"t" --tokens 5
expect_fail "sample: empty prompt" \
    "--prompt is empty" -- \
    "$BIN" sample "$W/ckpt_copy.h5" --prompt ""
expect_fail "sample: --tokens -1" \
    "--tokens -1" -- \
    "$BIN" sample "$W/ckpt_copy.h5" --tokens -1
expect_fail "sample: --temperature abc" \
    "--temperature abc" -- \
    "$BIN" sample "$W/ckpt_copy.h5" --temperature abc
expect_fail "sample: --top-k 1000" \
    "--top-k 1000" -- \
    "$BIN" sample "$W/ckpt_copy.h5" --top-k 1000

# ---------------------------------------------------------------- dispatch

expect_fail "unknown command" \
    "unknown command 'frobnicate'" -- \
    "$BIN" frobnicate
expect_fail "no command" \
    "usage: nanomoe <command>" -- \
    "$BIN"

# ---------------------------------------------------------------- token shards
# one written as llm.c's write_datafile does, and a truncated copy
$PY - "$W/shard.bin" <<'EOF2'
import numpy as np, sys
h = np.zeros(256, dtype=np.int32); h[0], h[1], h[2] = 20240520, 1, 1000
with open(sys.argv[1], "wb") as f:
    f.write(h.tobytes()); f.write((np.arange(1000) * 37 % 50257).astype(np.uint16).tobytes())
EOF2
head -c 1500 "$W/shard.bin" >"$W/short.bin"
run "$BIN" inspect "$W/shard.bin"
if [ "$RC" -eq 0 ] && grep -q "uint16 tokens" "$W/logs/stdout" && grep -q "tokens: 1000 " "$W/logs/stdout" \
    && grep -q "ids: 0 .. 36963" "$W/logs/stdout"; then report "inspect describes a token shard"
else report "inspect describes a token shard" "unexpected output: $(tr '\n' ' ' <"$W/logs/stdout")"; fi
expect_fail "inspect: truncated token shard" \
    "short.bin" "promises 1000 tokens" -- \
    "$BIN" inspect "$W/short.bin"

# ---------------------------------------------------------------- summary

echo "# $((PASS + FAIL)) cases: $PASS passed, $FAIL failed"
if [ "$FAIL" -gt 0 ]; then
    for n in "${FAILED[@]}"; do echo "#   failed: $n"; done
    exit 1
fi
exit 0
