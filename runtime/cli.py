"""What every command line shares: ``--out`` is a folder, a user's mistake is one ``error:`` line, and no
input ends in a Python traceback.

::

    @command("python -m runtime.predict")          # every CLI's main(argv): one line, exit 2, for what it can explain
    def main(argv=None) -> int: ...

    path = report_file(args.out, "metrics.json")   # --out DIR -> DIR/metrics.json (DIR/x.json also taken as is)
    return fail(e)                                 # prints "error: <message>" on stderr, returns exit status 2

:func:`command` turns what a command raises into one ``error:`` line on stderr: bad values and files
(ValueError, KeyError of a malformed file, JSON / YAML / UTF-8 decode errors), the file system (OSError:
missing, unreadable, permission denied, disk full), images (Pillow's unreadable file and decompression-bomb
errors), unreadable checkpoints (pickle / zip errors) and RuntimeError (PyTorch's, a missing backend) get exit
status 2; Ctrl-C gets one line and 130; anything else is a bug: one ``internal error:`` line and status 1.
``--debug`` (any command, anywhere on its command line) or ``FDET_DEBUG=1`` lets the exception through with
its traceback instead.

Imports only the standard library.
"""

from __future__ import annotations

import argparse
import contextvars
import errno
import functools
import json
import os
import pickle
import sys
import traceback
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

__all__ = ["DEBUG_ENV", "DEBUG_FLAG", "EXIT_INTERNAL", "EXIT_INTERRUPTED", "EXIT_USAGE", "ProductParser", "command",
           "debug_enabled",
           "describe_os_error", "explain", "fail", "one_line", "out_folder", "report_file", "run_main"]

EXIT_USAGE = 2          # bad input, a file that cannot be used, a backend this host lacks
EXIT_INTERNAL = 1       # a bug: Python's own status for an uncaught exception
EXIT_INTERRUPTED = 130  # Ctrl-C, as a shell reports SIGINT
DEBUG_FLAG = "--debug"
DEBUG_ENV = "FDET_DEBUG"
_MAX_LINE = 600         # characters of one error line

_debug: contextvars.ContextVar[bool] = contextvars.ContextVar("fdet_debug", default=False)

MainFn = Callable[[Sequence[str] | None], int | None]


class DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a flag's default after its help, except when the help already states one or the default says
    nothing (None, False, a suppressed value)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text.lower() or action.default in (None, False, argparse.SUPPRESS):
            return text
        return super()._get_help_string(action)


class ProductParser(argparse.ArgumentParser):
    """The argument parser of every command: abbreviated flags rejected (a typo never silently means another
    flag), ``--debug`` listed in ``--help`` (:func:`run_main` takes it out of the command line before
    parsing), and a usage error is one ``error:`` line, exit 2, without argparse's usage block."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        if kwargs.get("formatter_class") in (None, argparse.ArgumentDefaultsHelpFormatter):
            kwargs["formatter_class"] = DefaultsFormatter
        super().__init__(*args, **kwargs)
        self.add_argument(DEBUG_FLAG, action="store_true", default=argparse.SUPPRESS,
                          help=f"on an error, show the Python traceback (also: {DEBUG_ENV}=1)")

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def debug_enabled() -> bool:
    """True under ``--debug`` (inside a :func:`command`) or with ``FDET_DEBUG`` set to 1 / true / yes."""
    return _debug.get() or os.environ.get(DEBUG_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def one_line(text: str, limit: int = _MAX_LINE) -> str:
    """``text`` on one line: its lines stripped and joined by spaces, cut at ``limit`` characters."""
    s = " ".join(line.strip() for line in str(text).splitlines() if line.strip())
    return s if len(s) <= limit else s[:limit - 3].rstrip() + "..."


def fail(error: BaseException | str, prefix: str = "error") -> int:
    """Print ``<prefix>: <error on one line>`` (:func:`explain`'s words for an exception) on stderr and return
    :data:`EXIT_USAGE` (2).

    Under ``--debug`` / ``FDET_DEBUG=1`` an exception's traceback is printed first.
    """
    if isinstance(error, BaseException) and error.__traceback__ is not None and debug_enabled():
        traceback.print_exception(error, file=sys.stderr)
    text = (explain(error) if isinstance(error, Exception) else None) or one_line(str(error).strip())
    text = text or type(error).__name__
    print(f"{prefix}: {text}", file=sys.stderr)
    return EXIT_USAGE


# --------------------------------------------------------------------------------------------
# What an exception means to the user.
# --------------------------------------------------------------------------------------------
_OS_HINTS = {
    errno.ENOSPC: "the disk is full: free some space and run again",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EACCES: "this user may not access it",
    errno.EPERM: "this user may not access it",
    errno.EROFS: "the file system is read-only",
    errno.EISDIR: "expected a file, found a folder",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EEXIST: "it is already there",
    errno.ENAMETOOLONG: "the path is too long",
}


def describe_os_error(e: OSError) -> str:
    """``"<file>: <what went wrong> (<what to do>)"`` for an OSError."""
    what = e.strerror or one_line(str(e)) or type(e).__name__
    hint = _OS_HINTS.get(e.errno or -1, "")
    names = " -> ".join(str(n) for n in (e.filename, e.filename2) if n is not None)
    text = f"{names}: {what}" if names else what
    return f"{text} ({hint})" if hint and hint.lower() not in text.lower() else text


def _optional_types(module: str, *names: str) -> tuple[type, ...]:
    """Exception classes of an already imported library (none when it is not loaded: it raised nothing)."""
    mod = sys.modules.get(module)
    return tuple(t for n in names if isinstance(t := getattr(mod, n, None), type))


def explain(error: BaseException) -> str | None:
    """One line saying what went wrong for an error a user can act on; None for a bug (an unexpected type)."""
    if isinstance(error, UnicodeDecodeError):
        return (f"not UTF-8 text: byte 0x{error.object[error.start]:02x} at position {error.start} "
                f"({error.reason}); expected a UTF-8 text file")
    if isinstance(error, json.JSONDecodeError):
        return f"invalid JSON at line {error.lineno} column {error.colno}: {error.msg}"
    if isinstance(error, _optional_types("yaml", "YAMLError")):
        return "invalid YAML: " + one_line(str(error))
    if isinstance(error, _optional_types("PIL.Image", "DecompressionBombError")):
        return "image refused by Pillow's size limit (Image.MAX_IMAGE_PIXELS): " + one_line(str(error))
    if isinstance(error, OSError):
        return describe_os_error(error)
    if isinstance(error, (pickle.UnpicklingError, zipfile.BadZipFile, EOFError)):
        return f"not a readable file ({type(error).__name__}: {one_line(str(error)) or 'it ends early'})"
    if isinstance(error, KeyError):
        return f"malformed input: missing key {error.args[0]!r}" if error.args else "malformed input: a key is missing"
    if isinstance(error, MemoryError):
        return "out of memory: use a smaller --batch-size or smaller images"
    if isinstance(error, (ValueError, RuntimeError)):
        return one_line(_worker_message(str(error), type(error).__name__)) or type(error).__name__
    return None


def _worker_message(text: str, type_name: str) -> str:
    """The original message of an error re-raised from a DataLoader worker (whose text is the worker's whole
    traceback), else ``text``."""
    if "Original Traceback" not in text:
        return text
    marker = f"\n{type_name}: "
    return text.rsplit(marker, 1)[1] if marker in text else text.strip().splitlines()[-1]


# --------------------------------------------------------------------------------------------
# The wrapper of every command's main(argv).
# --------------------------------------------------------------------------------------------
def _split_debug(argv: Sequence[str]) -> tuple[list[str], bool]:
    """``argv`` without ``--debug`` (not after a ``--``), and whether it was there."""
    args, debug, literal = [], False, False
    for a in argv:
        if a == DEBUG_FLAG and not literal:
            debug = True
            continue
        literal = literal or a == "--"
        args.append(a)
    return args, debug


def run_main(main: MainFn, argv: Sequence[str] | None = None, *, prog: str = "", interrupt: bool = True) -> int:
    """Run ``main(argv)`` as a command: its exit status, or one stderr line and 2 / 1 / 130 for what it raised.

    ``argv``: the arguments (None: ``sys.argv[1:]``); ``--debug`` is taken out of them. ``interrupt=False``
    lets KeyboardInterrupt through (a command with its own Ctrl-C handling). argparse's own exits
    (``--help``, a usage error: status 2) pass as they are.
    """
    args, flag = _split_debug(list(sys.argv[1:] if argv is None else argv))
    token = _debug.set(flag or debug_enabled())
    try:
        code = main(args)
        return int(code or 0)
    except KeyboardInterrupt:
        if not interrupt or _debug.get():
            raise
        print(f"{prog + ': ' if prog else ''}interrupted (Ctrl-C)", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:  # noqa: BLE001 - the one place that turns any error into one line
        if _debug.get():
            raise
        line = explain(e)
        if line is not None:
            print(f"error: {line}", file=sys.stderr)
            return EXIT_USAGE
        print(f"internal error: {type(e).__name__}: {one_line(str(e), 300)} (this is a bug; rerun with "
              f"{DEBUG_FLAG} or {DEBUG_ENV}=1 for the traceback and report it)", file=sys.stderr)
        return EXIT_INTERNAL
    finally:
        _debug.reset(token)


def command(prog: str = "", *, interrupt: bool = True) -> Callable[[MainFn], Callable[..., int]]:
    """Decorator for a command's ``main(argv=None)``: it runs through :func:`run_main` (see there)."""
    def wrap(main: MainFn) -> Callable[..., int]:
        @functools.wraps(main)
        def wrapped(argv: Sequence[str] | None = None) -> int:
            return run_main(main, argv, prog=prog, interrupt=interrupt)
        wrapped.__wrapped_main__ = main  # type: ignore[attr-defined]
        return wrapped
    return wrap


# --------------------------------------------------------------------------------------------
# --out.
# --------------------------------------------------------------------------------------------
def out_folder(out: str | os.PathLike[str], flag: str = "--out") -> Path:
    """``--out`` as a folder (created); ValueError when a file of that name is in the way."""
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{flag} {folder} is a file; {flag} names a folder (it is created if missing)")
    for parent in folder.parents:
        if parent.exists() and not parent.is_dir():
            raise ValueError(f"{flag} {folder}: {parent} is a file; {flag} names a folder (it is created if missing)")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def report_file(out: str | os.PathLike[str], default_name: str, flag: str = "--out") -> Path:
    """Where a command writes its JSON report: ``default_name`` inside the folder ``out`` (created).

    A path ending in ``.json`` that is not an existing folder is taken as the report file itself,
    so scripts written for that form keep working.
    """
    p = Path(out)
    if p.suffix.lower() == ".json" and not p.is_dir():
        out_folder(p.parent, flag)
        return p
    return out_folder(p, flag) / default_name
