"""TensorRT backend: the one-line failure on a machine without TensorRT, and the GPU-free parts
(I/O discovery from a mocked engine, batch planning, a full infer with mocked CUDA/TensorRT)."""
from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from runtime.backends import trt_backend
from runtime.backends.trt_backend import TensorSpec, TRTDetector, discover_io, plan_io
from runtime.load import load_detector
from runtime.metadata import ModelMeta, NMSConfig, write_sidecar

ROOT = Path(__file__).resolve().parents[2]
K = 5


def _meta(**kw):
    return ModelMeta(model_name="m", class_names=["a", "b", "c"], category_ids=[1, 2, 3], input_size=(32, 48),
                     mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), graph="engine", precision="fp16",
                     nms=NMSConfig(score_threshold=0.1, iou_threshold=0.5, max_detections=K), **kw)


def _have_tensorrt() -> bool:
    try:
        import tensorrt  # noqa: F401
    except Exception:  # noqa: BLE001
        return False
    return True


# ------------------------------------------------------------------------------------------------
# A mocked TensorRT module and engine (the TensorRT 10 name-based API).
# ------------------------------------------------------------------------------------------------
class FakeTrt(types.SimpleNamespace):
    class TensorIOMode:
        INPUT, OUTPUT = "INPUT", "OUTPUT"

    class DataType:
        FLOAT, INT32 = "FLOAT", "INT32"

    @staticmethod
    def nptype(dt):
        return {"FLOAT": np.float32, "INT32": np.int32}[dt]


IO = [  # name, mode, shape, dtype
    ("images", "INPUT", (-1, 3, 32, 48), "FLOAT"),
    ("num_detections", "OUTPUT", (-1, 1), "INT32"),
    ("detection_boxes", "OUTPUT", (-1, K, 4), "FLOAT"),
    ("detection_scores", "OUTPUT", (-1, K), "FLOAT"),
    ("detection_classes", "OUTPUT", (-1, K), "INT32"),
]


class FakeEngine:
    def __init__(self, io=IO, profile=((1, 3, 32, 48), (4, 3, 32, 48), (8, 3, 32, 48))):
        self.io, self.profile = io, profile
        self.num_io_tensors = len(io)

    def _row(self, name):
        return next(r for r in self.io if r[0] == name)

    def get_tensor_name(self, i):
        return self.io[i][0]

    def get_tensor_mode(self, name):
        return self._row(name)[1]

    def get_tensor_shape(self, name):
        return list(self._row(name)[2])

    def get_tensor_dtype(self, name):
        return self._row(name)[3]

    def get_tensor_profile_shape(self, name, index):
        assert name == "images" and index == 0
        return [list(s) for s in self.profile]


def test_discover_io_from_a_mocked_engine():
    specs = discover_io(FakeEngine(), FakeTrt)
    assert [s.name for s in specs] == [r[0] for r in IO]
    assert specs[0].is_input and not any(s.is_input for s in specs[1:])
    assert specs[0].profile == ((1, 3, 32, 48), (4, 3, 32, 48), (8, 3, 32, 48))
    assert specs[1].dtype == np.int32 and specs[2].dtype == np.float32 and specs[2].shape == (-1, K, 4)
    assert specs[1].profile is None


def test_plan_io_dynamic_and_fixed_batch():
    plan = plan_io(discover_io(FakeEngine(), FakeTrt), _meta())
    assert (plan.kind, plan.fixed_batch, plan.max_batch, plan.min_batch) == ("nms", None, 8, 1)
    fixed = [(n, m, (4,) + s[1:], d) for n, m, s, d in IO]
    plan = plan_io(discover_io(FakeEngine(fixed), FakeTrt), _meta())
    assert (plan.fixed_batch, plan.max_batch) == (4, 4)
    raw = [IO[0], ("boxes", "OUTPUT", (-1, 10, 4), "FLOAT"), ("scores", "OUTPUT", (-1, 10, 4), "FLOAT")]
    assert plan_io(discover_io(FakeEngine(raw), FakeTrt), _meta()).kind == "raw"


def test_plan_io_rejects_what_does_not_fit_the_sidecar():
    specs = discover_io(FakeEngine(), FakeTrt)
    with pytest.raises(ValueError, match="input_size 64x64"):
        plan_io(specs, _meta().__class__(**{**_meta().__dict__, "input_size": (64, 64)}))
    wrong = [TensorSpec("input", True, (1, 3, 32, 48), np.dtype(np.float32))] + specs[1:]
    with pytest.raises(ValueError, match="one input named 'images'"):
        plan_io(wrong, _meta())
    with pytest.raises(ValueError, match="neither"):
        plan_io(specs[:1] + [TensorSpec("out", False, (1, 3), np.dtype(np.float32))], _meta())


# ------------------------------------------------------------------------------------------------
# A whole TRTDetector over mocks: discovery, buffers, execute, output parsing to detections.
# ------------------------------------------------------------------------------------------------
class FakeContext:
    """Executes by writing known NMS outputs into the bound host buffers (via FakeCuda)."""

    def __init__(self, cuda):
        self.cuda, self.shapes, self.addresses, self.runs = cuda, {}, {}, 0

    def set_input_shape(self, name, shape):
        self.shapes[name] = tuple(shape)
        return True

    def get_tensor_shape(self, name):
        b = self.shapes["images"][0]
        return {"images": self.shapes["images"], "num_detections": (b, 1), "detection_boxes": (b, K, 4),
                "detection_scores": (b, K), "detection_classes": (b, K)}[name]

    def set_tensor_address(self, name, ptr):
        self.addresses[name] = ptr
        return True

    def execute_async_v3(self, stream):
        if self.cuda.capturing is not None:  # inside a CUDA-graph capture: recorded, not run
            self.cuda.capturing.append(lambda: self._run())
        else:
            self._run()
        return True

    def _run(self):
        self.runs += 1
        mem = self.cuda.mem
        x = mem[self.addresses["images"]]
        b = x.shape[0]
        num = np.zeros((b, 1), np.int32)
        boxes = np.zeros((b, K, 4), np.float32)
        scores = np.zeros((b, K), np.float32)
        classes = np.zeros((b, K), np.int32)
        for i in range(b):  # image i gets i + 1 detections of class i % 3, box depending on the image
            n = min(i + 1, K)
            num[i] = n
            boxes[i, :n] = [0.25, 0.5, 0.75, 1.0]
            scores[i, :n] = np.linspace(0.9, 0.5, n)
            scores[i, 0] = 0.9 if x[i].mean() < 0 else 0.95  # the input shows through
            classes[i, :n] = i % 3
        for name, v in (("num_detections", num), ("detection_boxes", boxes), ("detection_scores", scores),
                        ("detection_classes", classes)):
            mem[self.addresses[name]] = v


class FakeCuda:
    """The backend's CUDA interface, with 'device memory' as a dict of numpy arrays."""

    name = "fake"

    def __init__(self):
        self.mem, self.next = {}, 1000
        self.capturing = None
        self.launches = 0

    def set_device(self, i):
        pass

    def stream(self):
        return "stream"

    def stream_handle(self, s):
        return 7

    def synchronize(self, s):
        pass

    def malloc(self, nbytes):
        self.next += 1
        return self.next

    def free(self, ptr):
        self.mem.pop(ptr, None)

    def host_empty(self, shape, dtype):
        return np.zeros(shape, dtype), None

    def host_free(self, token):
        pass

    def _op(self, fn):
        if self.capturing is not None:
            self.capturing.append(fn)
        else:
            fn()

    def h2d(self, dst, src, stream):
        self._op(lambda: self.mem.__setitem__(dst, src.copy()))  # reads the host buffer when run

    def d2h(self, dst, src, stream):
        self._op(lambda: np.copyto(dst, self.mem[src]))

    def begin_capture(self, stream):
        self.capturing = []

    def end_capture(self, stream):
        graph, self.capturing = self.capturing, None
        return graph

    def launch(self, graph, stream):
        self.launches += 1
        for fn in graph:
            fn()


def fake_trt_module(serialized: bytes, make_engine, make_context):
    """A ``tensorrt`` module whose Runtime deserialises only ``serialized`` into ``make_engine()``, whose
    execution contexts are ``make_context()``."""
    class Logger:
        WARNING = 2

        def __init__(self, level):
            pass

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            assert data == serialized
            engine = make_engine()
            engine.create_execution_context = make_context
            return engine

    return types.SimpleNamespace(Logger=Logger, Runtime=Runtime, init_libnvinfer_plugins=lambda *a: True,
                                 TensorIOMode=FakeTrt.TensorIOMode, nptype=FakeTrt.nptype)



def _fake_trt_module(cuda):
    return fake_trt_module(b"fake engine", FakeEngine, lambda: FakeContext(cuda))

@pytest.fixture
def fake_engine(tmp_path, monkeypatch):
    cuda = FakeCuda()
    monkeypatch.setattr(trt_backend, "import_tensorrt", lambda: _fake_trt_module(cuda))
    monkeypatch.setattr(trt_backend, "cuda_api", lambda: cuda)
    path = tmp_path / "model_fp16.engine"
    path.write_bytes(b"fake engine")
    write_sidecar(path, _meta())
    return path


def test_trt_detector_on_mocks_parses_outputs_into_detections(fake_engine):
    det = TRTDetector(fake_engine)
    assert (det.name, det.kind, det.max_batch) == ("tensorrt-fp16", "nms", 8)
    images = [np.zeros((100, 200, 3), np.uint8), np.zeros((40, 60, 3), np.uint8)]
    a, b = det(images)
    np.testing.assert_allclose(a["boxes"], [[50, 50, 150, 100]])
    assert a["labels"].tolist() == [1] and b["labels"].tolist() == [2, 2]
    np.testing.assert_allclose(b["boxes"], [[15, 20, 45, 40]] * 2)
    np.testing.assert_allclose(b["scores"], [0.9, 0.5])
    # A bigger batch than the profile allows is split; buffers are made once per batch size.
    many = det([np.zeros((10, 10, 3), np.uint8)] * 10)
    assert [len(d["scores"]) for d in many] == [1, 2, 3, 4, 5, 5, 5, 5, 1, 2]
    assert sorted(det._slots) == [2, 8]
    det.close()


def test_cuda_graph_is_captured_once_per_batch_size_and_replayed(fake_engine):
    plain = TRTDetector(fake_engine)
    det = TRTDetector(fake_engine, cuda_graph=True)
    dark, white = np.zeros((40, 60, 3), np.uint8), np.full((40, 60, 3), 255, np.uint8)
    for images in ([dark, white], [white, dark], [dark]):
        got, ref = det(images), plain(images)
        for g, r in zip(got, ref):
            for key in ("boxes", "scores", "labels"):
                np.testing.assert_array_equal(g[key], r[key])
    assert [d["scores"][0] for d in det([white, dark])] == pytest.approx([0.95, 0.9])
    assert sorted(det._slots) == [1, 2] and all(s.graph is not None for s in det._slots.values())
    assert det.cuda.launches == 4  # replays; TensorRT ran eagerly once per batch size before capture
    assert det.context.runs == 2 + 4


def test_cuda_api_fails_in_one_line_without_a_gpu():
    from runtime.backends.trt_backend import cuda_api

    try:
        api = cuda_api()
    except RuntimeError as e:
        assert str(e).startswith("TensorRT backend unavailable") and "\n" not in str(e)
    else:
        pytest.skip(f"a CUDA device is usable here ({api.name})")


def test_load_detector_routes_engines_to_tensorrt(fake_engine):
    det = load_detector(fake_engine)  # device="cpu" (the default) means cuda:0 for engines
    assert det.name == "tensorrt-fp16"
    with pytest.raises(ValueError, match="does not apply to a TensorRT engine"):
        load_detector(fake_engine, provider="cpu")


@pytest.mark.skipif(_have_tensorrt(), reason="TensorRT is installed here")
def test_engine_fails_with_one_line_message_without_tensorrt(tmp_path):
    path = tmp_path / "model.engine"
    path.write_bytes(b"not really an engine")
    write_sidecar(path, _meta())
    with pytest.raises(RuntimeError) as e:
        load_detector(path)
    msg = str(e.value)
    assert "TensorRT backend unavailable" in msg and "\n" not in msg


def test_fp16_is_a_build_time_choice(tmp_path):
    path = tmp_path / "model.engine"
    path.write_bytes(b"x")
    write_sidecar(path, _fp32_meta())
    with pytest.raises(ValueError, match="built with precision 'fp32'"):
        load_detector(path, fp16=True)


def _fp32_meta():
    m = _meta()
    m.precision = "fp32"
    return m


@pytest.mark.skipif(_have_tensorrt(), reason="TensorRT is installed here")
def test_evaluate_cli_exits_2_with_the_message(tmp_path):
    path = tmp_path / "model.engine"
    path.write_bytes(b"x")
    write_sidecar(path, _meta())
    r = subprocess.run([sys.executable, "-m", "runtime.evaluate", "--model", str(path), "--data", "shapes"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert lines == [lines[0]] and lines[0].startswith("error: TensorRT backend unavailable"), r.stderr


def test_an_engine_of_another_tensorrt_says_so_in_one_line(tmp_path, monkeypatch):
    """TensorRT 11 engines do not load in JetPack's TensorRT 10 (and back): the message names both
    versions and the build path from the sidecar."""
    cuda = FakeCuda()
    trt = _fake_trt_module(cuda)
    trt.__version__ = "10.3.0"
    trt.Runtime = lambda logger: types.SimpleNamespace(deserialize_cuda_engine=lambda data: None)
    monkeypatch.setattr(trt_backend, "import_tensorrt", lambda: trt)
    monkeypatch.setattr(trt_backend, "cuda_api", lambda: cuda)
    path = tmp_path / "model_fp16.engine"
    path.write_bytes(b"built elsewhere")
    meta = _meta(extra={"build_path": {"name": "strongly-typed"}, "gpu": "NVIDIA RTX 4090"})
    meta.versions = {"tensorrt": "11.4.0.106"}
    write_sidecar(path, meta)
    with pytest.raises(RuntimeError) as e:
        TRTDetector(path)
    msg = str(e.value)
    assert "\n" not in msg and "TensorRT 10.3.0 could not deserialize model_fp16.engine" in msg
    assert "TensorRT 11.4.0.106, strongly-typed build path, NVIDIA RTX 4090" in msg and msg.endswith("--fp16")
