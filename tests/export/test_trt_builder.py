"""export.trt without TensorRT: the CLI's exit 2 + one line, and everything that needs no GPU."""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from export import trt as T
from runtime.metadata import read_sidecar, sha256_file, write_sidecar

ROOT = Path(__file__).resolve().parents[2]
HAS_TRT = importlib.util.find_spec("tensorrt") is not None


def _args(**kw) -> argparse.Namespace:
    ns = T.build_parser().parse_args([])
    for k, v in kw.items():
        setattr(ns, k, v)
    return ns


@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed here")
def test_cli_without_tensorrt_exits_2_with_one_line(exported, tmp_path):
    out = tmp_path / "m.engine"
    r = subprocess.run([sys.executable, "-m", "export.trt", "--onnx", exported["files"]["trt"]["onnx"], "--fp16",
                        "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    lines = (r.stdout + r.stderr).strip().splitlines()
    assert len(lines) == 1, lines
    assert "Traceback" not in lines[0] and "TensorRT is not installed" in lines[0] and "pip install tensorrt" in lines[0]
    assert not out.exists()
    assert sorted(tmp_path.iterdir()) == [], "a refused build writes nothing (no m.build.json)"


def test_cli_help_is_complete():
    r = subprocess.run([sys.executable, "-m", "export.trt", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0
    for flag in ("--onnx", "--out", "--fp16", "--int8", "--best", "--batch", "--workspace-mb", "--timing-cache",
                 "--calib-images", "--calib-cache", "--calib-batch", "--force", "--typing"):
        assert flag in r.stdout


def test_batch_and_precision_validation():
    assert T.parse_batch("1,4,16") == (1, 4, 16)
    assert T.parse_batch("8") == (8, 8, 8)
    for bad in ("0,1,2", "4,2,8", "1,2", "a,b,c"):
        with pytest.raises(ValueError, match="MIN,OPT,MAX"):
            T.parse_batch(bad)
    assert T.precision_from_flags() == "fp32"
    assert T.precision_from_flags(best=True) == "best"
    with pytest.raises(ValueError, match="choose one precision"):
        T.precision_from_flags(fp16=True, int8=True)


def test_resolve_settings(exported, tmp_path, calib_dir):
    onnx_path = exported["files"]["trt"]["onnx"]
    s = T.resolve_settings(_args(onnx=onnx_path, fp16=True))
    assert s.precision == "fp16" and s.engine == Path(onnx_path).with_name("model_fp16.engine")
    assert s.timing_cache == s.engine.with_name("timing.cache") and s.calib_cache is None
    s = T.resolve_settings(_args(onnx=onnx_path, int8=True, calib_images=str(calib_dir), batch="1,2,4"))
    assert s.batch == (1, 2, 4) and s.calib_cache == s.engine.with_name("calib.cache")
    with pytest.raises(ValueError, match="not found"):
        T.resolve_settings(_args(onnx=str(tmp_path / "missing.onnx")))
    with pytest.raises(ValueError, match="only used with --int8"):
        T.resolve_settings(_args(onnx=onnx_path, calib_images=str(calib_dir)))
    with pytest.raises(ValueError, match=r"\.engine"):
        T.resolve_settings(_args(onnx=onnx_path, out=str(tmp_path / "x.plan")))
    with pytest.raises(ValueError, match="no images"):
        T.resolve_settings(_args(onnx=onnx_path, int8=True, calib_images=str(tmp_path)))
    lonely = tmp_path / "lonely.onnx"
    lonely.write_bytes(Path(onnx_path).read_bytes())
    with pytest.raises(ValueError, match="sidecar not found"):
        T.resolve_settings(_args(onnx=str(lonely)))
    # in-process main(): a usage error is exit 2 as well
    assert T.main(["--onnx", str(tmp_path / "missing.onnx")]) == 2


def test_out_is_a_folder_like_every_other_command(exported, tmp_path):
    onnx_path = exported["files"]["trt"]["onnx"]
    s = T.resolve_settings(_args(onnx=onnx_path, fp16=True, out=str(tmp_path)))
    assert s.engine == tmp_path / "model_fp16.engine" and s.timing_cache == tmp_path / "timing.cache"
    s = T.resolve_settings(_args(onnx=onnx_path, out=str(tmp_path / "new" / "engines")))
    assert s.engine == tmp_path / "new" / "engines" / "model_fp32.engine"
    assert T.resolve_settings(_args(onnx=onnx_path, out=str(tmp_path / "e.engine"))).engine == tmp_path / "e.engine"
    (tmp_path / "taken").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        T.resolve_settings(_args(onnx=onnx_path, out=str(tmp_path / "taken")))


def test_engine_cache_key(exported, tmp_path):
    onnx_path = Path(exported["files"]["trt"]["onnx"])
    s = T.BuildSettings(onnx=onnx_path, engine=tmp_path / "model_fp16.engine", precision="fp16", batch=(1, 1, 8))
    sha = sha256_file(onnx_path)
    key = T.build_key(sha, s, "10.3.0", "NVIDIA Jetson Orin", (8, 7))
    assert T.engine_is_fresh(s.engine, key) == (False, "no engine yet")
    s.engine.write_bytes(b"plan")
    meta = T.engine_meta(read_sidecar(onnx_path), precision="fp16", onnx_sha256=sha, key=key,
                         extra={"gpu": "NVIDIA Jetson Orin", "compute_capability": [8, 7]})
    write_sidecar(s.engine, meta)
    side = read_sidecar(s.engine)
    assert side.graph == "engine" and side.precision == "fp16" and side.onnx_sha256 == sha
    assert side.versions["tensorrt"] == "10.3.0" and side.extra["gpu"] == "NVIDIA Jetson Orin"
    assert side.nms_plugin == read_sidecar(onnx_path).nms_plugin
    fresh, why = T.engine_is_fresh(s.engine, key)
    assert fresh, why
    stale = dict(key, onnx_sha256="0" * 64)
    assert T.engine_is_fresh(s.engine, stale) == (False, "the ONNX file changed since the engine was built "
                                                         "(sha256 differs)")
    fresh, why = T.engine_is_fresh(s.engine, T.build_key(sha, dataclasses.replace(s, batch=(1, 4, 8)), "10.3.0",
                                                          "NVIDIA Jetson Orin", (8, 7)))
    assert not fresh and "batch" in why
    fresh, why = T.engine_is_fresh(s.engine, dict(key, tensorrt="10.4.0"))
    assert not fresh and "tensorrt" in why


def test_calibration_batches_and_cache(model_and_meta, calib_dir, tmp_path):
    from export.data import list_images
    from runtime.preprocess import preprocess_batch
    meta = model_and_meta[2]
    files = [str(p) for p in list_images(calib_dir)]
    assert len(files) == 8
    b = T.CalibrationBatches(files[:7], meta, batch_size=3)
    batches = list(b)
    assert len(b) == len(batches) == 2 and b.shape == (3, 3, 64, 64) and b.nbytes == 3 * 3 * 64 * 64 * 4
    np.testing.assert_array_equal(batches[1], preprocess_batch(files[3:6], meta.input_size, meta.mean, meta.std)[0])
    assert T.CalibrationBatches(files[:2], meta, batch_size=8).shape[0] == 2
    cache = tmp_path / "calib.cache"
    assert not T.calibration_cache_valid(cache, "a" * 64)[0]
    T.write_calibration_cache(cache, b"TRT-1234-EntropyCalibration2\n", "a" * 64)
    assert T.calibration_cache_valid(cache, "a" * 64)[0]
    ok, why = T.calibration_cache_valid(cache, "b" * 64)
    assert not ok and "another ONNX" in why


def test_entropy_calibrator_with_fake_tensorrt(model_and_meta, calib_dir, tmp_path):
    """The calibrator's protocol (batch size, device pointers, end of data, cache) with stand-ins
    for the tensorrt module and the CUDA binding."""
    from export.data import list_images
    meta = model_and_meta[2]

    class Base:
        def __init__(self):
            pass

    fake_trt = types.SimpleNamespace(IInt8EntropyCalibrator2=Base)

    class FakeCuda:
        def __init__(self):
            self.copies, self.freed = [], 0

        def malloc(self, n):
            return 4096

        def htod(self, ptr, arr):
            self.copies.append(arr.copy())

        def free(self, ptr):
            self.freed += 1

        @staticmethod
        def pointer(p):
            return int(p)

    cuda = FakeCuda()
    batches = T.CalibrationBatches([str(p) for p in list_images(calib_dir)], meta, batch_size=4)
    cache = tmp_path / "calib.cache"
    cal = T.make_entropy_calibrator(fake_trt, cuda, batches, cache, "c" * 64, log=lambda *a: None)
    assert cal.get_batch_size() == 4
    assert cal.read_calibration_cache() is None
    assert cal.get_batch(["images"]) == [4096] and cal.get_batch(["images"]) == [4096]
    assert cal.get_batch(["images"]) is None
    assert len(cuda.copies) == 2 and cuda.copies[0].shape == (4, 3, 64, 64) and cuda.copies[0].dtype == np.float32
    cal.write_calibration_cache(memoryview(b"cache-bytes"))
    assert cal.read_calibration_cache() == b"cache-bytes"
    cal.free()
    assert cuda.freed == 1
    # cache-only calibrator (no images): never touches CUDA
    cal2 = T.make_entropy_calibrator(fake_trt, None, None, cache, "c" * 64, log=lambda *a: None)
    assert cal2.get_batch(["images"]) is None and cal2.read_calibration_cache() == b"cache-bytes"


def test_fast_precision_table():
    from export.trt.env import fast_precisions
    assert fast_precisions((6, 1)) == (False, True)     # GeForce 10: slow FP16, dp4a INT8
    assert fast_precisions((5, 3)) == (True, False)     # Jetson Nano
    assert fast_precisions((8, 7)) == (True, True)      # Jetson Orin
    assert fast_precisions(None) == (False, False)


def test_verify_engine_against_cpu_reference(exported, tmp_path):
    """The post-build parity check, with a stand-in for the TensorRT detector."""
    from runtime.outputs import NMS_OUTPUTS
    from runtime.trt_reference import TrtGraphReference
    onnx_path = Path(exported["files"]["trt"]["onnx"])
    ref = TrtGraphReference(onnx_path)

    def factory(shift):
        class Fake:
            def __init__(self, path):
                self.closed = False

            def infer(self, x):
                out = dict(zip(NMS_OUTPUTS, ref(x)))
                out["detection_boxes"] = out["detection_boxes"] + shift
                return out

            def close(self):
                self.closed = True
        return Fake

    meta = read_sidecar(onnx_path)
    engine = tmp_path / "m.engine"
    ok = T.verify_engine(engine, onnx_path, dataclasses.replace(meta, graph="engine", precision="fp32"), (1, 1, 8),
                         _images(), detector_factory=factory(0.0), log=lambda *a: None)
    assert ok["ok"] and ok["agreement"] == 1.0 and set(ok["batches"]) == {"1", "3"}
    bad = T.verify_engine(engine, onnx_path, dataclasses.replace(meta, graph="engine", precision="fp16"), (1, 1, 1),
                          _images(), detector_factory=factory(0.2), log=lambda *a: None)
    assert not bad["ok"] and bad["agreement"] < 0.8 and set(bad["batches"]) == {"1"}
    int8 = T.verify_engine(engine, onnx_path, dataclasses.replace(meta, graph="engine", precision="int8"), (2, 4, 8),
                           _images(), detector_factory=factory(0.2), log=lambda *a: None)
    assert int8["ok"] and int8["min_agreement"] is None and set(int8["batches"]) == {"2", "3"}


def _images():
    from export.data import synthetic_images
    return synthetic_images(3, seed=5)
