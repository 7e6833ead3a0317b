"""TensorRT backend of the text / non-text classifier, on the mocked TensorRT module and CUDA interface of the
detector's backend tests: I/O planning against the sidecar's grids, a whole load_classifier -> predict over a
mocked engine (padding to the profile's smallest batch, splitting above its largest, CUDA-graph replay), the
one-line failure without TensorRT, and the benchmark's tensorrt row."""
from __future__ import annotations

import numpy as np
import pytest

from runtime.backends import trt_backend
from runtime.backends.trt_backend import TensorSpec, discover_io
from runtime.classifier import TRTClassifier, load_classifier, plan_text_io
from runtime.errors import BackendUnavailable
from runtime.metadata import ModelMeta, write_sidecar
from tests.runtime.test_trt_backend import FakeCuda, FakeEngine, FakeTrt, fake_trt_module

H, W = 32, 48
IO = [("images", "INPUT", (-1, 3, H, W), "FLOAT"), ("text_prob", "OUTPUT", (-1,), "FLOAT"),
      ("region_prob_3", "OUTPUT", (-1, 3, 3), "FLOAT"), ("region_prob_5", "OUTPUT", (-1, 5, 5), "FLOAT")]


def _meta(precision: str = "fp16") -> ModelMeta:
    return ModelMeta(model_name="textnet_student", class_names=["text"], category_ids=[1], input_size=(H, W),
                     mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), graph="engine", precision=precision, task="text",
                     extra={"grids": [3, 5], "threshold": 0.5})


def _expected(x: np.ndarray) -> dict[str, np.ndarray]:
    """What the fake engine computes from its input [B, 3, H, W]: text_prob = sigmoid(mean), region (r, c) of
    grid g = sigmoid(mean of the left half) * (r + c + 1) / (2 g)."""
    p = 1.0 / (1.0 + np.exp(-x.mean(axis=(1, 2, 3))))
    left = 1.0 / (1.0 + np.exp(-x[..., : W // 2].mean(axis=(1, 2, 3))))
    out = {"text_prob": p.astype(np.float32)}
    for g in (3, 5):
        ramp = (np.add.outer(np.arange(g), np.arange(g)) + 1) / (2.0 * g)
        out[f"region_prob_{g}"] = (left[:, None, None] * ramp).astype(np.float32)
    return out


class TextContext:
    def __init__(self, cuda):
        self.cuda, self.shapes, self.addresses, self.runs, self.batches = cuda, {}, {}, 0, []

    def set_input_shape(self, name, shape):
        self.shapes[name] = tuple(shape)
        return True

    def get_tensor_shape(self, name):
        b = self.shapes["images"][0]
        return {"images": self.shapes["images"], "text_prob": (b,), "region_prob_3": (b, 3, 3),
                "region_prob_5": (b, 5, 5)}[name]

    def set_tensor_address(self, name, ptr):
        self.addresses[name] = ptr
        return True

    def execute_async_v3(self, stream):
        if self.cuda.capturing is not None:
            self.cuda.capturing.append(self._run)
        else:
            self._run()
        return True

    def _run(self):
        self.runs += 1
        x = self.cuda.mem[self.addresses["images"]]
        self.batches.append(x.shape[0])
        for name, v in _expected(x).items():
            self.cuda.mem[self.addresses[name]] = v


def _trt_module(cuda, io, profile):
    return fake_trt_module(b"fake text engine", lambda: FakeEngine(io, profile), lambda: TextContext(cuda))


def _engine(tmp_path, monkeypatch, io=IO, profile=((1, 3, H, W), (4, 3, H, W), (8, 3, H, W)), meta=None):
    cuda = FakeCuda()
    monkeypatch.setattr(trt_backend, "import_tensorrt", lambda: _trt_module(cuda, io, profile))
    monkeypatch.setattr(trt_backend, "cuda_api", lambda: cuda)
    path = tmp_path / "model_fp16.engine"
    path.write_bytes(b"fake text engine")
    write_sidecar(path, meta or _meta())
    return path


def _images(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(n)
    return [rng.integers(0, 256, (20 + 7 * i, 30 + 5 * i, 3), dtype=np.uint8) for i in range(n)]


def test_plan_text_io_checks_the_outputs_against_the_sidecar_grids():
    plan = plan_text_io(discover_io(FakeEngine(IO, ((1, 3, H, W),) * 3), FakeTrt), _meta())
    assert (plan.kind, plan.min_batch, plan.max_batch) == ("text", 1, 1)
    assert [s.name for s in plan.outputs] == ["text_prob", "region_prob_3", "region_prob_5"]
    specs = discover_io(FakeEngine(IO[:3], ((1, 3, H, W),) * 3), FakeTrt)
    with pytest.raises(ValueError, match=r"lacks the outputs \['region_prob_5'\]"):
        plan_text_io(specs, _meta(), "m.engine")
    wrong = [TensorSpec("input", True, (1, 3, H, W), np.dtype(np.float32))] + specs[1:]
    with pytest.raises(ValueError, match="one input named 'images'"):
        plan_text_io(wrong, _meta())


def test_load_classifier_runs_a_text_engine(tmp_path, monkeypatch):
    clf = load_classifier(_engine(tmp_path, monkeypatch))
    assert isinstance(clf, TRTClassifier) and clf.name == "tensorrt-fp16" and clf.batch_size == 8
    images = _images(11)
    got = clf.probabilities(images)
    ref = {k: np.concatenate([_expected(clf.preprocess(images[s:s + 8]).copy())[k] for s in (0, 8)])
           for k in got}
    for k in ("text_prob", "region_prob_3", "region_prob_5"):
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-6)
    assert got["region_prob_5"].shape == (11, 5, 5) and clf.context.batches == [8, 3]
    r = clf.predict(images[:2])
    assert r[1]["is_text"] == (r[1]["text_prob"] >= 0.5) and r[1]["regions"][3].shape == (3, 3)
    assert sorted(clf._slots) == [2, 3, 8]
    clf.close()


def test_small_batches_are_padded_to_the_profile_minimum_and_cuda_graphs_replay(tmp_path, monkeypatch):
    path = _engine(tmp_path, monkeypatch, profile=((4, 3, H, W), (4, 3, H, W), (4, 3, H, W)))
    clf = load_classifier(path, cuda_graph=True)
    images = _images(2)
    first, second = clf.probabilities(images), clf.probabilities(images[::-1])
    ref = _expected(clf.preprocess(images).copy())
    np.testing.assert_allclose(first["text_prob"], ref["text_prob"], rtol=1e-6)
    np.testing.assert_allclose(second["text_prob"], ref["text_prob"][::-1], rtol=1e-6)
    assert first["region_prob_3"].shape == (2, 3, 3) and clf.context.batches == [4, 4, 4]
    assert clf.cuda.launches == 2 and sorted(clf._slots) == [4]


def test_a_detector_sidecar_or_a_non_cuda_device_is_refused_in_one_line(tmp_path, monkeypatch):
    path = _engine(tmp_path, monkeypatch)
    with pytest.raises(ValueError, match="must be 'cuda' or 'cuda:N'"):
        load_classifier(path, device="gpu")
    meta = _meta()
    meta.task = "detect"
    write_sidecar(path, meta)
    with pytest.raises(ValueError, match="not a text / non-text classifier"):
        load_classifier(path)


def test_without_tensorrt_one_line_backend_unavailable(tmp_path, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "tensorrt", None)     # "import tensorrt" raises ImportError
    path = tmp_path / "model_fp16.engine"
    path.write_bytes(b"x")
    write_sidecar(path, _meta())
    with pytest.raises(BackendUnavailable) as e:
        load_classifier(path)
    assert str(e.value).startswith("TensorRT backend unavailable") and "\n" not in str(e.value)


def test_benchmark_has_a_tensorrt_row_per_engine(tmp_path, monkeypatch):
    from benchmarks.text import _rows
    path = _engine(tmp_path, monkeypatch)
    rows = {name: (make, why) for name, make, why in _rows(tmp_path / "ck.pt", tmp_path, 1)}
    assert "tensorrt" not in rows and rows["tensorrt-fp16"][1] == ""
    clf = rows["tensorrt-fp16"][0]()
    assert isinstance(clf, TRTClassifier) and clf.path == path
    path.unlink()
    rows = {name: why for name, _, why in _rows(tmp_path / "ck.pt", tmp_path, 1)}
    assert "no engine" in rows["tensorrt"]
