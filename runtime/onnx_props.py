"""The ``metadata_props`` of an ONNX file, read without the ``onnx`` package (a deployment host may
have only ONNX Runtime).

An ``.onnx`` file is one protobuf ``ModelProto``; its field 14, repeated, holds
``StringStringEntryProto {1: key, 2: value}``. Only the top level is walked: the graph (field 7,
the bulk of the file) is stepped over by its length, through a memory map, so a large model is not
read into memory.

Imports only the standard library.
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path

__all__ = ["read_metadata_props"]

_METADATA_PROPS = 14
_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5


def _varint(buf: bytes | mmap.mmap, i: int) -> tuple[int, int]:
    """(value, next offset) of the base-128 varint at ``buf[i]``."""
    value = shift = 0
    while True:
        if i >= len(buf) or shift > 63:
            raise ValueError("truncated or malformed varint")
        b = buf[i]
        value |= (b & 0x7F) << shift
        i += 1
        if b < 0x80:
            return value, i
        shift += 7


def _fields(buf: bytes | mmap.mmap, start: int, end: int) -> list[tuple[int, int, int]]:
    """(field number, start, end) of each length-delimited field in ``buf[start:end]``; others skipped."""
    out, i = [], start
    while i < end:
        key, i = _varint(buf, i)
        number, wire = key >> 3, key & 7
        if wire == _VARINT:
            _, i = _varint(buf, i)
        elif wire == _I64:
            i += 8
        elif wire == _I32:
            i += 4
        elif wire == _LEN:
            n, i = _varint(buf, i)
            out.append((number, i, i + n))
            i += n
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        if i > end:
            raise ValueError("a field runs past the end of the file")
    return out


def read_metadata_props(path: str | os.PathLike[str]) -> dict[str, str]:
    """``{key: value}`` of the ONNX file's ``metadata_props``; ValueError naming the file when it
    cannot be read as an ONNX protobuf."""
    p = Path(path)
    try:
        with open(p, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            props = {}
            for number, s, e in _fields(buf, 0, len(buf)):
                if number != _METADATA_PROPS:
                    continue
                entry = {n: bytes(buf[a:b]).decode("utf-8") for n, a, b in _fields(buf, s, e)}
                props[entry.get(1, "")] = entry.get(2, "")
            return props
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read the metadata of ONNX file {p}: {e}") from None
