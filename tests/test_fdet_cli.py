"""The ``fdet`` console command: every sub-command listed, each one's --help is its module's help."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fdet.cli import COMMANDS, main

ROOT = Path(__file__).resolve().parents[1]


def test_the_console_script_is_declared():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["fdet"] == "fdet.cli:main"


def test_help_lists_every_subcommand(capsys):
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    for name in ("train", "export", "predict", "evaluate", "bench", "parity", "trt", "ablate"):
        assert f"\n  {name} " in text, name
    for cmd in COMMANDS.values():
        assert cmd.python_form in text


def test_no_subcommand_or_an_unknown_one_is_exit_2(capsys):
    assert main([]) == 2 and "usage: fdet" in capsys.readouterr().out
    assert main(["predcit"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown sub-command 'predcit'. Did you mean 'predict'?") and err.count("\n") == 1


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_subcommand_help_is_the_module_help(name, capsys):
    with pytest.raises(SystemExit) as e:
        main([name, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: {COMMANDS[name].python_form}") and "--out" in out


def test_subcommand_exit_status_and_arguments_pass_through(tmp_path, capsys):
    assert main(["predict", "--model", str(tmp_path / "none.onnx"), "--source", str(tmp_path), "--out",
                 str(tmp_path / "o")]) == 2
    assert "error:" in capsys.readouterr().err


def test_fdet_predict_needs_no_torch():
    code = ("import sys\nfrom fdet.cli import main\n"
            "try:\n    main(['predict', '--help'])\nexcept SystemExit:\n    pass\n"
            "bad = [m for m in ('torch', 'distill', 'export', 'benchmarks') if m in sys.modules]\n"
            "assert not bad, bad\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    r = subprocess.run([sys.executable, "-m", "fdet", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "predict" in r.stdout
