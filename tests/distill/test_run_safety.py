"""A run folder cannot be destroyed by mistake: an existing run is refused without --resume / --overwrite, the
last N checkpoints are kept and a truncated newest one is passed over, leftover temporary files are removed,
and a full disk or a read-only folder is one line that changes no file written before."""
import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import runtime.atomic
from distill import train
from distill.checkpoint import Checkpoint, chain_names, last_checkpoints, load_latest, save_last
from distill.safety import SkipBatches, clean_temp_files

KW = {"width_mult": 0.25, "min_ratio": 0.1, "max_ratio": 0.9}


def args(data_root: str, out: Path, *extra: str) -> list[str]:
    """8 training images in batches of 4: 2 steps per epoch, 2 epochs."""
    return ["--preset", "smoke", "--model", "ssdlite_mobilenetv2", "--model-kwargs", json.dumps(KW),
            "--data-root", data_root, "--shapes-train", "8", "--shapes-val", "2", "--batch-size", "4",
            "--epochs", "2", "--device", "cpu", "--out", str(out), *extra]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def finished_run(data_root, tmp_path_factory):
    """A finished 2-epoch run (last.pt at epoch 2, last-prev.pt at epoch 1); tests work on copies of it."""
    out = tmp_path_factory.mktemp("runs") / "base"
    assert train.main(args(data_root, out)) == 0
    return out


@pytest.fixture
def run(finished_run, tmp_path):
    return Path(shutil.copytree(finished_run, tmp_path / "run"))


def hashes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def one_error_line(err: str) -> str:
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def tiny_checkpoint(epoch: int) -> Checkpoint:
    return Checkpoint(model_name="tiny", model_kwargs={}, num_classes=1, model={"w": torch.full((4,), float(epoch))},
                      epoch=epoch)


# ----------------------------------------------------------------------------------------------- the folder
def test_existing_run_is_refused_without_resume_or_overwrite(run, data_root, capsys):
    before = hashes(run)
    assert train.main(args(data_root, run)) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"--out {run} already holds a run" in line and f"--resume {run}" in line and "--overwrite" in line
    assert hashes(run) == before
    assert train.main(["--resume", str(run), "--overwrite"]) == 2
    assert "give one of them" in one_error_line(capsys.readouterr().err)
    # --overwrite: the old run's files go (its last-prev.pt too), a new run takes the folder
    assert train.main(args(data_root, run, "--overwrite", "--seed", "1", "--epochs", "1")) == 0
    assert "removed the previous run's files" in capsys.readouterr().out
    assert [r["epoch"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())] == [1]
    assert not (run / "last-prev.pt").exists() and Checkpoint.load(run / "last.pt").config["run"]["seed"] == 1


def test_last_n_checkpoints_are_kept_newest_first(tmp_path, capsys):
    assert chain_names(3) == ["last.pt", "last-prev.pt", "last-prev2.pt"] and chain_names(1) == ["last.pt"]
    for epoch in range(4):
        save_last(tiny_checkpoint(epoch), tmp_path, keep=3)
    assert [p.name for p in last_checkpoints(tmp_path)] == ["last.pt", "last-prev.pt", "last-prev2.pt"]
    assert [Checkpoint.load(p).epoch for p in last_checkpoints(tmp_path)] == [3, 2, 1]
    (tmp_path / "last.pt").unlink()                                  # lost (e.g. by hand): the previous one serves
    assert load_latest(tmp_path).epoch == 2
    assert "last.pt is missing: continuing from last-prev.pt (end of epoch 3)" in capsys.readouterr().err
    save_last(tiny_checkpoint(4), tmp_path, keep=1)                  # fewer kept: the older ones go
    assert [p.name for p in last_checkpoints(tmp_path)] == ["last.pt"]
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]      # no temporary file left behind


def test_truncated_newest_checkpoint_falls_back_to_the_previous_one(run, capsys):
    assert Checkpoint.load(run / "last-prev.pt").epoch == 0
    good = Checkpoint.load(run / "last.pt")
    data = (run / "last.pt").read_bytes()
    (run / "last.pt").write_bytes(data[:len(data) // 2])          # a disk that lost the end of the file
    assert load_latest(run).epoch == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{run / 'last.pt'} is unreadable" in err[0] and "last-prev.pt (end of epoch 1)" in err[0]
    # --resume computes epoch 2 again from last-prev.pt: the same weights as before the damage
    assert train.main(["--resume", str(run)]) == 0
    assert (run / "last.pt.unreadable").is_file()
    again = Checkpoint.load(run / "last.pt")
    assert again.epoch == 1 and all(torch.equal(again.model[k], v) for k, v in good.model.items())
    assert [r["epoch"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())] == [1, 2]


def test_leftover_temporary_files_are_removed_on_resume(run, capsys):
    (run / ".last.0123abcd.tmp.pt").write_bytes(b"half a checkpoint")
    (run / ".metrics.89abcdef.tmp.jsonl").write_text("{")
    (run / "notes.tmp").write_text("the user's")                    # not ours: stays
    assert train.main(["--resume", str(run)]) == 0                   # finished: nothing to train, summary again
    assert "removed 2 unfinished temporary file(s)" in capsys.readouterr().out
    assert sorted(p.name for p in run.iterdir() if "tmp" in p.name) == ["notes.tmp"]
    assert clean_temp_files(run) == []


# ----------------------------------------------------------------------------------------------- failing writes
def _disk_full(*a, **kw):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _read_only(target):
    raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(target))


@pytest.mark.parametrize("where, reason", [
    ("replace", "No space left on device"),          # the rename that publishes a file fails
    ("save", "No space left on device"),             # writing the checkpoint itself fails
    ("create", "Permission denied"),                 # no file can be created in the folder
])
def test_full_disk_or_read_only_folder_is_one_line_and_changes_nothing(run, capsys, monkeypatch, where, reason):
    before, metrics = hashes(run), (run / "metrics.jsonl").read_text()
    if where == "replace":
        monkeypatch.setattr(os, "replace", _disk_full)
    elif where == "save":
        monkeypatch.setattr(torch, "save", _disk_full)
    else:
        monkeypatch.setattr(runtime.atomic, "_reserve_temp", _read_only)
    assert train.main(["--resume", str(run), "--epochs", "3"]) == 2         # trains epoch 3, cannot save it
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith(f"error: cannot write {run}") and reason in line, line
    after = hashes(run)
    if where == "save":      # the epoch's metrics row went out before last.pt failed (--resume drops it)
        now = (run / "metrics.jsonl").read_text()
        assert now.startswith(metrics) and json.loads(now.splitlines()[-1])["epoch"] == 3
        for name in ("metrics.jsonl", "metrics.csv", "curves.png"):
            after.pop(name), before.pop(name)
    assert after == before


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into a 0555 folder")
def test_read_only_folder_by_permissions(run, capsys):
    before = hashes(run)
    run.chmod(0o555)
    try:
        assert train.main(["--resume", str(run), "--epochs", "3"]) == 2
    finally:
        run.chmod(0o755)
    assert "Permission denied" in one_error_line(capsys.readouterr().err)
    assert hashes(run) == before


# ----------------------------------------------------------------------------------------------- signals
# In a process of its own: signals are real, and this process may hold libraries that do not survive them.
SIGNALS = """
import os, signal
from distill.safety import StopSignals
previous = signal.getsignal(signal.SIGINT)
with StopSignals() as signals:
    os.kill(os.getpid(), signal.SIGTERM)
    print("request", signals.check(0, 1) == signal.SIGTERM)      # read at the batch boundary
    os.kill(os.getpid(), signal.SIGTERM)                          # a repeated SIGTERM: the same request
    try:
        os.kill(os.getpid(), signal.SIGINT)                       # then Ctrl-C: at once
    except KeyboardInterrupt:
        print("at once", signals.signum == signal.SIGTERM)
print("restored", signal.getsignal(signal.SIGINT) is previous)
"""


def test_second_signal_from_the_keyboard_stops_at_once_and_handlers_are_restored():
    p = subprocess.run([sys.executable, "-c", SIGNALS], cwd=Path(__file__).resolve().parents[2], capture_output=True,
                       text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert p.returncode == 0 and p.stdout.split("\n")[:3] == ["request True", "at once True", "restored True"], p.stderr


def test_keyboard_interrupt_outside_the_loop_is_one_line(monkeypatch, capsys, tmp_path):
    def interrupted(*a, **kw):
        raise KeyboardInterrupt
    monkeypatch.setattr(train, "fit", interrupted)
    assert train.main(["--model", "ssdlite_mobilenetv2", "--out", str(tmp_path / "r")]) == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "stopped at once" in err and "Traceback" not in err


def test_skipped_batches_are_the_rest_of_the_same_epoch():
    from torch.utils.data import BatchSampler, RandomSampler

    def batches(skip: int) -> list[list[int]]:
        gen = torch.Generator().manual_seed(7)
        inner = BatchSampler(RandomSampler(range(10), generator=gen), 3, drop_last=True)
        return list(SkipBatches(inner, skip) if skip else inner)
    assert batches(2) == batches(0)[2:] and len(SkipBatches([[0], [1], [2]], 2)) == 1
