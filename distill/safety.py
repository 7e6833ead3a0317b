"""What protects a training run: its folder cannot be overwritten by mistake, a write that fails (full disk,
read-only folder) is one line and changes nothing already written, and SIGINT / SIGTERM stop it at the next
batch with a checkpoint it continues from exactly.

* **The run folder.** ``--out`` of an existing run (any of :data:`RUN_FILES`) is refused unless the run is
  continued (``--resume``) or replaced (``--overwrite``: its run files are removed first). Temporary files an
  interrupted save left behind (``.NAME.XXXXXXXX.tmp.pt``, see :mod:`runtime.atomic`) are removed at start and
  resume; ``metrics.jsonl`` rows after the checkpoint resumed from are dropped (that epoch is recomputed).
* **Writes.** Every file goes through :mod:`runtime.atomic` (temporary file, fsync, rename, folder fsync);
  :func:`writing` turns an ``OSError`` into one :class:`RunWriteError` line naming the file.
* **Signals.** :class:`StopSignals` turns the first SIGINT (Ctrl-C) or SIGTERM into a request the training loop
  reads after every batch (:meth:`StopSignals.check`); ``fit`` then saves ``last.pt`` with the epoch's progress
  and exits with :class:`RunInterrupted` (status 130 for SIGINT, 143 for SIGTERM: 128 + the signal's number,
  as a shell reports it). A second Ctrl-C aborts at once (KeyboardInterrupt; the previous ``last.pt`` stays).
  Under torchrun every rank stops at the same batch (the request is agreed on with an all-reduce).
* **Mid-epoch resume.** :class:`SkipBatches` leaves out the batches of the interrupted epoch that were done:
  the epoch's order is a function of (seed, epoch), so the rest of the epoch is the same batches; with
  ``--workers 0`` the restored RNG state makes their augmentation identical too (with workers > 0 each
  worker's RNG restarts, so the remaining batches of that one epoch are augmented differently).

Test hook: ``DISTILL_TEST_SIGNAL_AT=SIG:EPOCH:BATCH`` (e.g. ``TERM:2:3``; SIG one of INT, TERM, KILL) makes
the process send itself that signal after batch BATCH (1-based, counted from the epoch's start) of epoch
EPOCH (1-based, as printed), so tests can stop a run at an exact point.
"""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import sys
import threading
from collections.abc import Iterator, Sized
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from torch.utils.data import Sampler

from runtime.atomic import write_text_atomic

from . import distributed

TEST_SIGNAL_ENV = "DISTILL_TEST_SIGNAL_AT"
# The files that make a folder a run (checkpoints of the last-N chain are added by ``run_files``).
RUN_FILES = ("config.yaml", "metrics.jsonl", "metrics.csv", "last.pt", "best.pt", "summary.json", "curves.png")
_TEMP_NAME = re.compile(r"^\..+\.[0-9a-f]{8}\.tmp(\.[A-Za-z0-9]+)?$")   # runtime.atomic's temporary files
_CHAIN_NAME = re.compile(r"^last-prev\d*\.pt(\.unreadable)?$|^last\.pt\.unreadable$")


class RunWriteError(ValueError):
    """A run file could not be written (full disk, read-only or foreign folder); one line naming it."""


class RunInterrupted(SystemExit):
    """The run stopped on SIGINT / SIGTERM after saving its checkpoint; ``code`` is 128 + the signal number."""


# ----------------------------------------------------------------------------------------------- the folder
def run_files(out: str | Path) -> list[Path]:
    """The files of the run in ``out`` that exist: :data:`RUN_FILES`, ``last-prev*.pt`` and set-aside ones."""
    out = Path(out)
    if not out.is_dir():
        return []
    found = [out / n for n in RUN_FILES if (out / n).is_file()]
    return found + sorted(p for p in out.iterdir() if _CHAIN_NAME.match(p.name) and p.is_file())


def clean_temp_files(out: str | Path) -> list[str]:
    """Remove the temporary files an interrupted atomic write left in ``out``; returns their names."""
    out = Path(out)
    if not out.is_dir():
        return []
    removed = []
    for p in sorted(out.iterdir()):
        if _TEMP_NAME.match(p.name) and p.is_file():
            with writing(p):
                p.unlink()
            removed.append(p.name)
    return removed


def prepare_run_folder(out: str | Path, *, resume: bool, overwrite: bool) -> None:
    """Make ``out`` ready for a run: refuse an existing run unless ``resume`` or ``overwrite`` (ValueError, one
    line), remove the old run's files with ``overwrite``, create the folder, remove leftover temporary files."""
    out = Path(out)
    found = run_files(out)
    if found and not resume:
        if not overwrite:
            raise ValueError(f"--out {out} already holds a run ({', '.join(p.name for p in found[:4])}"
                             f"{', ...' if len(found) > 4 else ''}): continue it with --resume {out}, or replace "
                             "it with --overwrite")
        for p in found:
            with writing(p):
                p.unlink()
        print(f"--overwrite: removed the previous run's files in {out} ({len(found)} files)")
    with writing(out):
        out.mkdir(parents=True, exist_ok=True)
    removed = clean_temp_files(out)
    if removed:
        print(f"removed {len(removed)} unfinished temporary file(s) of an interrupted save in {out}: "
              f"{', '.join(removed)}")


def trim_metrics(out: str | Path, epochs_done: int) -> None:
    """Keep the ``metrics.jsonl`` rows of the first ``epochs_done`` epochs (the checkpoint resumed from): rows
    of an epoch that is recomputed, and a line cut short by a kill, are dropped."""
    path = Path(out) / "metrics.jsonl"
    if not path.is_file():
        return
    lines = path.read_text(encoding="utf-8").splitlines()
    kept = []
    for line in lines:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            break
        if not isinstance(row, dict) or not isinstance(row.get("epoch"), int) or row["epoch"] > epochs_done:
            break
        kept.append(line)
    if len(kept) != len(lines):
        with writing(path):
            write_text_atomic(path, "".join(line + "\n" for line in kept))
        print(f"{path}: kept the rows of the {epochs_done} epoch(s) in the checkpoint, "
              f"dropped {len(lines) - len(kept)}")


@contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """Turn an OSError while writing ``path`` into one :class:`RunWriteError` line naming it."""
    try:
        yield
    except OSError as e:
        reason = e.strerror or str(e) or type(e).__name__
        raise RunWriteError(f"cannot write {path}: {reason}; files written before are unchanged (free space or "
                            "fix the folder's permissions, then continue with --resume)") from None


# ----------------------------------------------------------------------------------------------- claims
@contextmanager
def claim_run(out: str | Path) -> Iterator[dict | None]:
    """Claim the run folder ``out`` for this process, so that several study processes (one per GPU, or two
    one-thread processes on a small CPU) can work through the same list of runs: yields ``None`` when claimed,
    else the holder's ``{"pid", "host", "claim"}``. The claim is an exclusive ``flock`` on the file
    ``.NAME.claim`` beside the folder (the file names the holder): the kernel releases it when the process
    ends, however it ends, so no claim outlives its process. The file stays (removing a locked file races with
    the next claimant). Where ``fcntl`` is missing (Windows) every run is claimed: one process per study."""
    out = Path(out)
    path = out.parent / f".{out.name}.claim"
    try:
        import fcntl
    except ImportError:                        # no advisory locks: no sharing
        yield None
        return
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            held = False
        except BlockingIOError:
            held = True
        if held:
            try:
                holder = json.loads(os.pread(fd, 4096, 0) or b"{}")
            except ValueError:                 # being written by its holder this instant
                holder = {}
            yield {"pid": holder.get("pid"), "host": holder.get("host"), "claim": str(path)}
            return
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode(), 0)
        yield None
    finally:
        os.close(fd)                           # releases the lock


# ----------------------------------------------------------------------------------------------- signals
class StopSignals:
    """Within ``with StopSignals() as signals``: the first SIGINT / SIGTERM sets ``signals.signum``; a second
    SIGINT raises KeyboardInterrupt at once. Handlers are installed only in the main thread (elsewhere the
    process keeps its own), and restored on exit."""

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame) -> None:
        if self.signum is not None:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            return
        self.signum = signum
        if signum == signal.SIGINT:
            print("\nCtrl-C: stopping after this batch with a checkpoint (Ctrl-C again: stop at once, unsaved)",
                  file=sys.stderr, flush=True)

    def check(self, epoch: int, batches: int) -> int | None:
        """After batch ``batches`` (1-based) of 0-based ``epoch``: the signal to stop on, or None. Under torchrun
        a stop on any rank stops every rank at this batch."""
        _test_hook(epoch, batches)
        if distributed.context().enabled and not distributed.all_true(self.signum is None):
            return self.signum or signal.SIGTERM
        return self.signum


def exit_code(signum: int) -> int:
    """The shell's status of a process stopped by ``signum``: 128 + its number (SIGINT 130, SIGTERM 143)."""
    return 128 + int(signum)


def _test_hook(epoch: int, batches: int) -> None:
    spec = os.environ.get(TEST_SIGNAL_ENV)
    if not spec:
        return
    try:
        name, at_epoch, at_batch = spec.split(":")
        sig = getattr(signal, "SIG" + name.upper())
        at = (int(at_epoch), int(at_batch))
    except (ValueError, AttributeError):
        raise ValueError(f"{TEST_SIGNAL_ENV}={spec!r}: expected SIG:EPOCH:BATCH, e.g. TERM:2:3") from None
    if at == (epoch + 1, batches):
        os.kill(os.getpid(), sig)


# ----------------------------------------------------------------------------------------------- resume
class SkipBatches(Sampler[list[int]]):
    """A batch sampler without its first ``skip`` batches (the done part of an interrupted epoch). The inner
    sampler still draws its whole order, so the remaining batches are those of the uninterrupted epoch."""

    def __init__(self, batches: Sampler[list[int]] | Sized, skip: int):
        self.batches, self.skip = batches, int(skip)

    def __iter__(self) -> Iterator[list[int]]:
        for i, batch in enumerate(self.batches):
            if i >= self.skip:
                yield batch

    def __len__(self) -> int:
        return max(0, len(self.batches) - self.skip)
