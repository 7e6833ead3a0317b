"""Real (tiny) training processes stopped at exact points -- SIGINT / SIGTERM mid-epoch (a checkpoint is saved
at the batch boundary), then SIGKILL mid-epoch after resuming (the epoch in progress is lost) -- and resumed:
the same per-epoch losses, metrics and final weights as the run that never stopped. A plain run, and a GAN-KD
run stopped inside stage 2 (student learning), on CPU with --workers 0.

The stops are placed with the DISTILL_TEST_SIGNAL_AT hook (distill/safety.py): the process sends itself the
signal after the given batch of the given epoch."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from distill import train
from distill.checkpoint import Checkpoint
from distill.safety import TEST_SIGNAL_ENV
from tests.distill.test_kd_train import teacher_ckpt  # noqa: F401 (fixture)

REPO = Path(__file__).resolve().parents[2]
KW = {"width_mult": 0.25, "min_ratio": 0.1, "max_ratio": 0.9}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("data"))


def plain_args(data_root: str, out: Path, epochs: int = 2) -> list[str]:
    """12 training images in batches of 4: 3 steps per epoch."""
    return ["--preset", "smoke", "--model", "ssdlite_mobilenetv2", "--model-kwargs", json.dumps(KW),
            "--data-root", data_root, "--shapes-train", "12", "--shapes-val", "4", "--batch-size", "4",
            "--epochs", str(epochs), "--device", "cpu", "--out", str(out)]


def run_process(args: list[str], signal_at: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != TEST_SIGNAL_ENV}
    env["OMP_NUM_THREADS"] = "1"
    if signal_at:
        env[TEST_SIGNAL_ENV] = signal_at
    return subprocess.run([sys.executable, "-m", "distill.train", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)


def last_line(text: str) -> str:
    """The last line a terminal shows (progress bars redraw with carriage returns)."""
    return text.rstrip().split("\n")[-1].split("\r")[-1].strip()


def rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def assert_same_run(straight: Path, stopped: Path, extra_keys: tuple[str, ...] = ()) -> None:
    a, b = rows(straight), rows(stopped)
    assert [r["epoch"] for r in b] == [r["epoch"] for r in a]
    for ra, rb in zip(a, b):
        assert rb["step"] == ra["step"] and rb["train"] == ra["train"], ra["epoch"]     # exactly, not approximately
        assert rb["val"]["mAP"] == ra["val"]["mAP"] and rb.get("kd") == ra.get("kd")
    ca, cb = Checkpoint.load(straight / "last.pt"), Checkpoint.load(stopped / "last.pt")
    for k, v in ca.model.items():
        assert torch.equal(cb.model[k], v), k
    for key in extra_keys:
        for k, v in ca.extra[key]["patch"].items():
            assert torch.equal(cb.extra[key]["patch"][k], v), k


def stop_with(args: list[str], out: Path, spec: str, signum: int) -> Checkpoint:
    """Run until ``spec`` sends ``signum``: one line, no traceback, 128 + signum, a mid-epoch checkpoint."""
    p = run_process(args, spec)
    assert p.returncode == 128 + signum, p.stderr[-2000:]
    assert "Traceback" not in p.stderr
    epoch, batch = spec.split(":")[1:]
    assert last_line(p.stderr) == (f"interrupted at epoch {epoch} batch {batch}: saved {out / 'last.pt'}; "
                                   f"continue with --resume {out}")
    ck = Checkpoint.load(out / "last.pt")
    assert ck.partial["epoch"] == int(epoch) - 1 and ck.partial["batches"] == int(batch)
    return ck


def kill_with(args: list[str], spec: str) -> None:
    p = run_process(args, spec)
    assert p.returncode == -signal.SIGKILL, p.stderr[-2000:]


def test_plain_run_sigint_then_sigkill_then_resume_is_the_uninterrupted_run(data_root, tmp_path):
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    assert train.main(plain_args(data_root, straight)) == 0
    stop_with(plain_args(data_root, stopped), stopped, "INT:1:2", signal.SIGINT)        # Ctrl-C mid-epoch 1
    kill_with(["--resume", str(stopped)], "KILL:2:2")                                    # killed mid-epoch 2
    assert train.main(["--resume", str(stopped)]) == 0
    assert_same_run(straight, stopped)


def test_gan_kd_run_stopped_inside_stage_2_resumes_exactly(data_root, teacher_ckpt, tmp_path):
    """2 adversarial epochs of 3 student steps; D pre-learning 2 iterations, rounds of 2 student steps, D
    fine-tuning 1 iteration, on batches of their own. SIGTERM after the 1st student step of epoch 1 (a round in
    progress; the resumed epoch fine-tunes D on the stream's 3rd batch, past the 2 drawn before the stop), then
    SIGKILL after the 1st student step of epoch 2 (the second round)."""
    kd = ["--kd", "gan", "--teacher", teacher_ckpt, "--gan-post-epochs", "0", "--gan-d-pretrain-iters", "2",
          "--gan-d-finetune-iters", "1", "--gan-student-max-iters", "2"]
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    assert train.main(plain_args(data_root, straight) + kd) == 0
    ck = stop_with(plain_args(data_root, stopped) + kd, stopped, "TERM:1:1", signal.SIGTERM)
    sched = ck.extra["gan_state"]["schedule"]
    assert sched["stage"] == "student" and sched["stage_iters"] == 1               # inside stage 2
    assert ck.partial["plan"]["extra_drawn"] == 2 and ck.partial["plan"]["stages"] == {"d_pretrain": 2, "student": 1}
    kill_with(["--resume", str(stopped)], "KILL:2:1")
    assert train.main(["--resume", str(stopped)]) == 0
    assert_same_run(straight, stopped, extra_keys=("discriminators",))
