"""runtime.load: the suffix -> backend table and load_detector's argument checks (no model needed)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from runtime import load as load_mod
from runtime.load import BackendEntry, backend_for, load_detector, providers, register_backend, registered_backends

ROOT = Path(__file__).resolve().parents[2]


def test_table_routes_by_suffix_and_folder(tmp_path):
    assert [e.name for e in registered_backends()] == ["pytorch", "onnxruntime", "tensorrt", "openvino"]
    assert backend_for(tmp_path).name == "pytorch"  # a run folder
    assert backend_for("a/best.PT").name == "pytorch"
    assert backend_for("m.onnx").name == "onnxruntime"
    assert all(backend_for(f"m{s}").name == "tensorrt" for s in (".engine", ".plan", ".trt"))
    assert backend_for("m.tflite") is None
    assert backend_for("ir/m.xml").name == "openvino"
    assert set(providers()) == {"cpu", "cuda", "tensorrt", "reference", "openvino"}


def test_register_backend_rejects_a_taken_suffix(monkeypatch):
    monkeypatch.setattr(load_mod, "_TABLE", list(registered_backends()))
    with pytest.raises(ValueError, match=r"suffixes \['.onnx'\] already opened by backend 'onnxruntime'"):
        register_backend(BackendEntry("other", "another graph", "x", (".onnx",)))
    with pytest.raises(ValueError, match="folders already opened by backend 'pytorch'"):
        register_backend(BackendEntry("other", "a run", "x", (".run",), folders=True))


def test_a_registered_backend_is_imported_on_use(tmp_path, monkeypatch):
    monkeypatch.setattr(load_mod, "_TABLE", list(registered_backends()))
    mod = type(sys)("fake_backend")
    mod.open_model = lambda path, **kw: ("opened", path.name, kw)
    monkeypatch.setitem(sys.modules, "fake_backend", mod)
    register_backend(BackendEntry("fake", "a fake model", "fake_backend", (".fake",), providers=("cpu",)))
    (tmp_path / "m.fake").write_bytes(b"")
    got = load_detector(tmp_path / "m.fake", provider="cpu", threads=2)
    assert got == ("opened", "m.fake", {"device": "cpu", "provider": "cpu", "fp16": False, "threads": 2})
    with pytest.raises(ValueError, match=r"provider='reference' does not apply to a fake model"):
        load_detector(tmp_path / "m.fake", provider="reference")


def test_provider_typo_gets_a_suggestion(tmp_path):
    with pytest.raises(ValueError, match="provider must be one of .* Did you mean 'cuda'"):
        load_detector(tmp_path / "m.onnx", provider="cdua")


def test_interface_imports_no_backend_and_no_factory():
    code = ("import sys, runtime.detector\n"
            "bad = [m for m in sys.modules if m == 'runtime.load' or m.startswith('runtime.backends')]\n"
            "assert not bad, bad\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
