"""What every command line shares: ``--out`` is a folder, and a user's mistake is one ``error:`` line.

::

    path = report_file(args.out, "metrics.json")   # --out DIR -> DIR/metrics.json (DIR/x.json also taken as is)
    return fail(e)                                 # prints "error: <message>" on stderr, returns exit status 2

Imports only the standard library.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

__all__ = ["EXIT_USAGE", "fail", "out_folder", "report_file"]

EXIT_USAGE = 2


def fail(error: BaseException | str, prefix: str = "error") -> int:
    """Print ``<prefix>: <first line of error>`` on stderr and return :data:`EXIT_USAGE` (2)."""
    text = str(error).strip() or type(error).__name__
    print(f"{prefix}: {text}", file=sys.stderr)
    return EXIT_USAGE


def out_folder(out: str | os.PathLike[str], flag: str = "--out") -> Path:
    """``--out`` as a folder (created); ValueError when a file of that name is in the way."""
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{flag} {folder} is a file; {flag} names a folder (it is created if missing)")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def report_file(out: str | os.PathLike[str], default_name: str, flag: str = "--out") -> Path:
    """Where a command writes its JSON report: ``default_name`` inside the folder ``out`` (created).

    A path ending in ``.json`` that is not an existing folder is taken as the report file itself,
    so scripts written for that form keep working.
    """
    p = Path(out)
    if p.suffix.lower() == ".json" and not p.is_dir():
        p.parent.mkdir(parents=True, exist_ok=True)
        return p
    return out_folder(p, flag) / default_name
