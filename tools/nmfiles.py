"""Shared by the nanomoe tools: messages and opening nanomoe HDF5 files.

A file that is not the kind a tool expects ends the tool with exit status 2
and a message naming the file and what it is."""
import sys

try:
    import h5py
except ImportError as e:  # pragma: no cover
    sys.exit(f"{e}: install python3-h5py, python3-numpy and python3-matplotlib (Debian) and run with /usr/bin/python3")

KINDS = {"nanomoe-run": "a nanomoe run statistics file (run.h5)", "nanomoe-checkpoint": "a nanomoe checkpoint"}


def fail(tool, msg, status=1):
    sys.stderr.write(f"{tool}: {msg}\n")
    sys.exit(status)


def text(v):
    return v.decode() if isinstance(v, bytes) else str(v)


def open_nanomoe(path, want, tool):
    """Opens path read-only and checks its root `format` attribute is `want`
    (and, for a checkpoint, that /params and /config exist)."""
    try:
        f = h5py.File(path, "r")
    except (OSError, IOError) as e:
        fail(tool, f"cannot open '{path}' as HDF5: {e}", 2)
    fmt = text(f.attrs.get("format", b""))
    complete = want != "nanomoe-checkpoint" or ("params" in f and "config" in f)
    if fmt != want or not complete:
        what = f"{KINDS[fmt]}, not {KINDS[want]}" if fmt in KINDS and fmt != want \
            else f"not {KINDS[want]} (format attribute {fmt!r})"
        fail(tool, f"'{path}' is {what}", 2)
    return f
