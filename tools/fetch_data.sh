# Sourced by tools/demo.sh and tools/test.sh: prints the path of Tiny Shakespeare,
# downloading it to data/tinyshakespeare.txt when no local copy is given.
NANOMOE_DATA_URL=https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt

nanomoe_fetch_data() {
  local given=$1 dest=data/tinyshakespeare.txt
  if [ -n "$given" ]; then
    [ -s "$given" ] || { echo "error: data file '$given' does not exist or is empty" >&2; return 1; }
    realpath "$given"
    return 0
  fi
  if [ ! -s "$dest" ]; then
    mkdir -p data
    echo "downloading Tiny Shakespeare from $NANOMOE_DATA_URL" >&2
    curl -fL --retry 3 -o "$dest.part" "$NANOMOE_DATA_URL" >&2 \
      || { rm -f "$dest.part"; echo "error: download failed; pass a local copy with --data PATH" >&2; return 1; }
    mv "$dest.part" "$dest"
  fi
  realpath "$dest"
}
