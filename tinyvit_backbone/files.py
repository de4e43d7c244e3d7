"""Crash-safe file writes and file digests for every tool of the project: nothing half-written
is ever left under a final name.

Each writer writes a temporary file in the destination folder (same file system), flushes it to
disk, gives it the permissions a plain ``open()`` would (``mkstemp`` makes files private), then
``os.replace``s it over the final name, which is atomic on POSIX and Windows.

JSON goes out strict (:func:`dumps_json`): Python's ``json`` writes ``NaN`` and ``Infinity``,
which are not JSON and which strict parsers (``jq``, JavaScript, Go, Rust's serde) reject, so an
undefined number is written as ``null``.

JSON-lines files that runs append to (results, training logs) go through :func:`append_jsonl`:
one locked ``write`` per append, nothing torn left behind (see there).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import tempfile
from collections.abc import Callable
from typing import IO, Any


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any],
                 check: Callable[[str], Any] | None = None) -> None:
    """Call ``write(f)`` on a temporary binary file, then move it to ``path``. ``check``, when
    given, is called with the temporary file's path once it is complete on disk; an exception
    it raises keeps the file from ever reaching ``path`` (the temporary file is removed)."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if check is not None:
            check(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` atomically."""
    atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8, newlines as given) atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def json_safe(obj: Any) -> Any:
    """``obj`` with every non-finite float (NaN, +-Inf, NumPy's included) replaced by None and
    NumPy scalars / arrays turned into Python numbers / lists; containers are copied, anything
    else is returned as is."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {key: json_safe(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(value) for value in obj]
    if type(obj).__module__ == "numpy" and hasattr(obj, "tolist"):
        return json_safe(obj.tolist())
    return obj


def dumps_json(obj: Any, **kwargs) -> str:
    """``json.dumps`` that writes strict JSON: undefined numbers as ``null`` (:func:`json_safe`)."""
    return json.dumps(json_safe(obj), allow_nan=False, **kwargs)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented UTF-8 strict JSON (keys in insertion order) atomically."""
    data = (dumps_json(obj, indent=2) + "\n").encode()
    atomic_write(path, lambda f: f.write(data))


def atomic_torch_save(path: str | os.PathLike, obj: Any) -> None:
    """``torch.save(obj)`` atomically (a killed run never leaves a truncated checkpoint)."""
    import torch

    atomic_write(path, lambda f: torch.save(obj, f))


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def read_json(path: str | os.PathLike, what: str, error: type[Exception] | None = None) -> Any:
    """Load a JSON file, turning a missing or unreadable file into a clear ``error``
    (default ValueError; the tools pass their own error type)."""
    error = error or ValueError
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise error(f"{what} not found: {os.fspath(path)!r}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise error(f"{what} {os.fspath(path)!r} is not valid JSON ({err}); it was "
                    "damaged: restore it or delete it and rerun the command that wrote it") from None


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def append_jsonl(path: str | os.PathLike, records: list[dict],
                 log: Callable[[str], None] = _stderr) -> None:
    """Append ``records`` to ``path`` (created with its folder if needed), atomically.

    Under the lock, a torn last line (an earlier append cut short, e.g. by a full disk, or a
    file edited without its final line end) is repaired first, so the new records never get
    glued onto it (:func:`repair_torn_tail`, which says what it did through ``log``). An append
    that cannot be written whole (disk full, file-size limit) is cut back to where it started
    and raises ``OSError``: the file keeps exactly the complete records it had.
    """
    if not records:
        return
    import fcntl  # POSIX; imported here so that the atomic writers above load everywhere

    path = os.fspath(path)
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    payload = "".join(dumps_json(r, default=str) + "\n" for r in records).encode()
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        start = repair_torn_tail(fd, path, log)
        try:
            written = os.write(fd, payload)
        except OSError as err:
            os.ftruncate(fd, start)
            raise OSError(f"{path}: could not append {len(records)} record(s) "
                          f"({err.strerror or err}); the file is unchanged. Free disk space "
                          "and rerun the command") from None
        if written != len(payload):
            os.ftruncate(fd, start)  # never leave a torn line behind
            raise OSError(f"{path}: wrote {written} of {len(payload)} bytes of records (disk "
                          "full?); the partial line was removed and the file is unchanged. Free "
                          "disk space and rerun the command")
        os.fsync(fd)
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def repair_torn_tail(fd: int, path: str, log: Callable[[str], None] = _stderr) -> int:
    """Make the file behind ``fd`` (open read-write, exclusively locked) end with a line end;
    returns its size afterwards, where the next append starts.

    Every append writes whole lines, so bytes after the last line end are what a cut-short
    append left. If they hold one complete JSON record (only its line end is missing), the line
    end is added and the record kept. Otherwise they are no record: they are appended to
    ``<path>.torn`` for inspection, then cut off with one ``ftruncate`` (atomic under the lock:
    a reader sees the file before or after, and no complete record is touched).
    """
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return size
    start, chunk = size, 1 << 16
    while start > 0:  # find the last line end, reading backwards
        lo = max(0, start - chunk)
        block = os.pread(fd, start - lo, lo)
        cut = block.rfind(b"\n")
        if cut >= 0:
            start = lo + cut + 1
            break
        start = lo
    fragment = os.pread(fd, size - start, start)
    try:
        complete = isinstance(json.loads(fragment), dict)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError
        complete = False
    if complete:
        os.write(fd, b"\n")
        log(f"{path}: the last record had no line end (an append cut short just before it); "
            "added it, the record is kept")
        return size + 1
    side = path + ".torn"
    with open(side, "ab") as f:
        f.write(fragment + b"\n")
        f.flush()
        os.fsync(f.fileno())
    os.ftruncate(fd, start)
    log(f"{path}: removed a torn last line ({len(fragment)} bytes, not a complete record: an "
        f"earlier append was cut short, e.g. by a full disk) and kept its bytes in {side}; the "
        "complete records before it are unchanged")
    return start
