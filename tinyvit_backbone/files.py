"""Crash-safe file writes and file digests for every tool of the project: nothing half-written
is ever left under a final name.

Each writer writes a temporary file in the destination folder (same file system), flushes it to
disk, gives it the permissions a plain ``open()`` would (``mkstemp`` makes files private), then
``os.replace``s it over the final name, which is atomic on POSIX and Windows.

JSON goes out strict (:func:`dumps_json`): Python's ``json`` writes ``NaN`` and ``Infinity``,
which are not JSON and which strict parsers (``jq``, JavaScript, Go, Rust's serde) reject, so an
undefined number is written as ``null``.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
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
