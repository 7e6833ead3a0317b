"""Atomic file writes: a reader sees the old file or the complete new one, never a partial one.

::

    with atomic_path("runs/x/best.pt") as tmp:   # tmp: an empty file beside the target
        torch.save(state, tmp)                     # any writer that takes a path
    write_json_atomic("exports/x/model.json", meta.to_dict())

The temporary file lives in the target's folder (same file system, so ``os.replace`` is atomic),
is named ``.<stem>.<random>.tmp<suffix>`` (the target's suffix is kept for writers that choose
the format from it, e.g. ``np.save`` or PIL), is created with the process umask's permissions,
and is removed if the write fails. On success the file is flushed to disk, renamed over the
target and the folder entry is flushed too.

Imports only the standard library.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["atomic_path", "write_bytes_atomic", "write_text_atomic", "write_json_atomic"]


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _fsync_dir(folder: Path) -> None:
    """Flush a folder entry (the rename) to disk; a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _reserve_temp(target: Path) -> Path:
    """Create an empty, uniquely named file beside ``target`` (mode 0o666 minus the umask)."""
    for _ in range(100):
        tmp = target.with_name(f".{target.stem}.{secrets.token_hex(4)}.tmp{target.suffix}")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue
    raise RuntimeError(f"cannot create a temporary file beside {target}")


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on normal exit it replaces ``path`` atomically.

    Parent folders are created. The caller writes the whole file to the yielded path (and closes
    it) inside the ``with`` block. On an exception the temporary file is removed and ``path`` is
    left as it was.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _reserve_temp(target)
    try:
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(target.parent)


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; return ``path`` as a Path."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text_atomic(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (no newline translation); return ``path`` as a Path."""
    return write_bytes_atomic(path, text.encode(encoding))


def write_json_atomic(path: str | os.PathLike[str], obj: Any, indent: int | None = 2) -> Path:
    """Write ``obj`` as JSON (``indent`` spaces, a final newline; NaN / Infinity allowed as Python's
    json writes them) to ``path`` atomically; return ``path`` as a Path."""
    return write_text_atomic(path, json.dumps(obj, indent=indent, allow_nan=True) + "\n")
