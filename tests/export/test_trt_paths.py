"""The two TensorRT build paths with mocks of both generations (tests/export/fake_tensorrt.py):
TensorRT 11 parses the graph that states the precision (no flags, strongly typed network),
TensorRT 10 parses model_trt.onnx with builder flags and the entropy calibrator; the FP16 / INT8
names never hide an FP32 build; the sidecar records the path."""
from __future__ import annotations

import dataclasses
import shutil
import types
from pathlib import Path

import pytest

from export import trt as T
from export.trt import builder as B
from export.trt.dispatch import BuildPath, check_typed_network, choose_build_path
from runtime.errors import BackendUnavailable
from runtime.metadata import read_sidecar, sha256_file, write_sidecar
from tests.export.fake_tensorrt import FakeCuda, FakeDetector, fake_tensorrt
from tests.export.fake_tensorrt import cli_args as _args, quiet as _quiet


@pytest.fixture
def folder(exported, tmp_path) -> Path:
    """A fresh export folder holding only model_trt.onnx and its sidecar."""
    src = Path(exported["files"]["trt"]["onnx"])
    for suffix in (".onnx", ".json"):
        shutil.copy(src.with_suffix(suffix), tmp_path / f"model_trt{suffix}")
    return tmp_path


@pytest.fixture
def fake_env(monkeypatch):
    """``fake_env(major, version=None, cc=(8, 9))`` installs a fake tensorrt + CUDA + engine runner."""
    from export.trt import env

    def install(major: int, version: str | None = None, cc=(8, 9)):
        trt, cuda = fake_tensorrt(major, version), FakeCuda(cc)
        monkeypatch.setattr(env, "import_tensorrt", lambda: (trt, None))
        monkeypatch.setattr(env, "import_cuda", lambda: (cuda, None))
        monkeypatch.setattr("runtime.backends.trt_backend.TRTDetector", FakeDetector)
        trt.cuda = cuda
        return trt
    return install


# --------------------------------------------------------------------------- the dispatch table
@pytest.mark.parametrize("version,typing,path", [
    ("11.4.0.106", "auto", "strongly-typed"), ("11.0.0", "strongly-typed", "strongly-typed"),
    ("10.3.0", "auto", "builder-flags"), ("10.16.0", "auto", "builder-flags"),
    ("10.13.0", "strongly-typed", "strongly-typed"), ("8.6.1", "auto", "builder-flags"),
    ("10.3.0", "builder-flags", "builder-flags")])
def test_build_path_of_each_tensorrt(version, typing, path):
    p = choose_build_path(version, typing)
    assert p.name == path and p.tensorrt == version and p.reason
    assert p.sidecar() == {"name": path, "tensorrt": version, "reason": p.reason}


def test_build_paths_that_do_not_exist():
    with pytest.raises(ValueError, match="no builder-flags path"):
        choose_build_path("11.4.0", "builder-flags")
    with pytest.raises(ValueError, match="10.12"):
        choose_build_path("10.3.0", "strongly-typed")
    with pytest.raises(BackendUnavailable, match="older than 8.6"):
        choose_build_path("8.5.3")
    with pytest.raises(ValueError, match="--typing must be one of"):
        choose_build_path("11.4.0", "strong")


def test_network_flags_and_graph_per_path():
    trt11, trt10 = fake_tensorrt(11), fake_tensorrt(10)
    strong, flags = choose_build_path("11.4.0"), choose_build_path("10.3.0")
    assert strong.network_flags(trt11) == 1 << trt11.NetworkDefinitionCreationFlag.STRONGLY_TYPED
    assert choose_build_path("10.13.0", "strongly-typed").network_flags(trt10) == 1 << 1
    assert flags.network_flags(trt10) == 0
    assert BuildPath("builder-flags", "8.6.1", "").network_flags(trt10) == 1 << 0  # EXPLICIT_BATCH before 10
    assert [strong.graph_for(p) for p in ("fp32", "fp16", "int8")] == \
        ["model_trt.onnx", "model_trt_fp16.onnx", "model_trt_int8.onnx"]
    assert {flags.graph_for(p) for p in ("fp32", "fp16", "int8", "best")} == {"model_trt.onnx"}
    with pytest.raises(ValueError, match="--best has no strongly typed engine"):
        strong.graph_for("best")


def test_typed_network_check():
    plain = {"fp16_tensors": 0, "qdq_layers": 0}
    assert check_typed_network("fp32", plain, Path("m.onnx")) is None
    assert "FP32 engine under an FP16 name" in check_typed_network("fp16", plain, Path("m.onnx"))
    assert "FP32 engine under an INT8 name" in check_typed_network("int8", {**plain, "fp16_tensors": 3}, Path("m"))
    assert "not as FP32" in check_typed_network("fp32", {**plain, "qdq_layers": 2}, Path("m.onnx"))
    assert check_typed_network("int8", {**plain, "qdq_layers": 2}, Path("m.onnx")) is None


# --------------------------------------------------------------------------- TensorRT 11
def test_tensorrt11_fp16_builds_the_mixed_precision_graph_without_flags(folder, fake_env):
    trt = fake_env(11)
    s = T.resolve_settings(_args(onnx=str(folder / "model_trt.onnx"), fp16=True, batch="1,2,4"))
    rep = T.build_engine(s, log=_quiet)
    plan = trt.record["plans"][-1]
    fp16_graph = folder / "model_trt_fp16.onnx"
    assert Path(plan["parsed"]) == fp16_graph and plan["flags"] == [] and not plan["calibrator"]
    assert plan["network_flags"] == 1 << trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED
    side = read_sidecar(s.engine)
    assert s.engine.name == "model_fp16.engine" and side.precision == "fp16" and side.graph == "engine"
    assert side.extra["build_path"]["name"] == "strongly-typed" and side.extra["build_path"]["builder_flags"] == []
    assert side.onnx_sha256 == sha256_file(fp16_graph) and side.extra["build_key"]["build_path"] == "strongly-typed"
    assert side.extra["io_types"] == {"images": "float32", "num_detections": "int32", "detection_boxes": "float32",
                                      "detection_scores": "float32", "detection_classes": "int32"}
    assert side.extra["mixed_precision"]["fp16_nodes"] > 10
    assert read_sidecar(fp16_graph).extra["source_sha256"] == sha256_file(folder / "model_trt.onnx")
    v = rep["verification"]
    assert v["ok"] and v["agreement"] >= 0.8 and rep["build_path"]["name"] == "strongly-typed"
    again = T.build_engine(s, log=_quiet)  # the FP16 graph is reused, the engine is up to date
    assert again["status"] == "cached" and len(trt.record["plans"]) == 1


def test_tensorrt11_int8_builds_the_qdq_graph_without_a_calibrator(folder, fake_env, calib_dir):
    trt = fake_env(11)
    s = T.resolve_settings(_args(onnx=str(folder / "model_trt.onnx"), int8=True, calib_images=str(calib_dir)))
    rep = T.build_engine(s, log=_quiet)
    plan = trt.record["plans"][-1]
    assert Path(plan["parsed"]).name == "model_trt_int8.onnx" and plan["flags"] == [] and not plan["calibrator"]
    side = read_sidecar(s.engine)
    assert side.precision == "int8" and side.extra["build_path"]["name"] == "strongly-typed"
    assert side.extra["calibration"] == f"{calib_dir} (8 images)" and trt.cuda.copies == 0
    assert not (folder / "calib.cache").exists()
    assert rep["verification"]["ok"] and rep["verification"]["min_agreement"] is None
    network = trt.record["builders"][-1].networks[-1]
    assert sum(layer.type == "QUANTIZE" for layer in network.layers) > 10


def test_tensorrt11_refuses_an_fp32_graph_under_the_fp16_name(folder, fake_env):
    fake_env(11)
    fake = folder / "model_trt_fp16.onnx"  # FP32 bytes with a sidecar claiming FP16
    shutil.copy(folder / "model_trt.onnx", fake)
    meta = read_sidecar(folder / "model_trt.onnx")
    write_sidecar(fake, dataclasses.replace(meta, precision="fp16", onnx_sha256=sha256_file(fake), extra={
        **meta.extra, "source_sha256": sha256_file(folder / "model_trt.onnx")}))
    s = T.resolve_settings(_args(onnx=str(folder / "model_trt.onnx"), fp16=True))
    with pytest.raises(T.BuildError, match="without one FP16 tensor"):
        T.build_engine(s, log=_quiet)
    assert not s.engine.exists()


def test_tensorrt11_has_no_best_and_no_builder_flags(folder, fake_env, capsys):
    trt = fake_env(11)
    onnx = str(folder / "model_trt.onnx")
    assert T.main(["--onnx", onnx, "--best"]) == T.EXIT_UNAVAILABLE
    assert "--best has no strongly typed engine" in capsys.readouterr().err
    assert T.main(["--onnx", onnx, "--fp16", "--typing", "builder-flags"]) == T.EXIT_UNAVAILABLE
    assert "no builder-flags path" in capsys.readouterr().err
    b = T.EngineBuilder(trt, log=_quiet)
    with pytest.raises(T.BuildError, match="sets no precision flag"):
        b.set_precision("fp16", fast_fp16=True, fast_int8=True)
    forced = T.EngineBuilder(trt, path=BuildPath("builder-flags", "11.4.0", "test"), log=_quiet)
    with pytest.raises(T.BuildError, match="no BuilderFlag.FP16/INT8"):
        forced.set_precision("fp16", fast_fp16=True, fast_int8=True)
    assert trt.record["plans"] == []


def test_tensorrt11_refuses_a_slow_precision(folder, fake_env):
    fake_env(11, cc=(6, 1))  # GeForce 10: no fast FP16
    s = T.resolve_settings(_args(onnx=str(folder / "model_trt.onnx"), fp16=True))
    with pytest.raises(T.BuildError, match="no fast FP16"):
        T.build_engine(s, log=_quiet)


# --------------------------------------------------------------------------- TensorRT 10 (Jetson)
def test_tensorrt10_fp16_sets_the_builder_flag_on_the_fp32_graph(folder, fake_env):
    trt = fake_env(10)
    s = T.resolve_settings(_args(onnx=str(folder / "model_trt.onnx"), fp16=True))
    rep = T.build_engine(s, log=_quiet)
    plan = trt.record["plans"][-1]
    assert Path(plan["parsed"]).name == "model_trt.onnx" and plan["flags"] == ["FP16"] and plan["network_flags"] == 0
    side = read_sidecar(s.engine)
    assert side.extra["build_path"]["name"] == "builder-flags" and side.extra["build_path"]["builder_flags"] == ["FP16"]
    assert side.onnx_sha256 == sha256_file(folder / "model_trt.onnx")
    assert not (folder / "model_trt_fp16.onnx").exists() and rep["verification"]["ok"]


def test_tensorrt10_int8_uses_the_entropy_calibrator_and_its_cache(folder, fake_env, calib_dir):
    trt = fake_env(10)
    s = T.resolve_settings(_args(onnx=str(folder / "model_trt.onnx"), int8=True, calib_images=str(calib_dir)))
    T.build_engine(s, log=_quiet)
    plan = trt.record["plans"][-1]
    assert plan["parsed"].endswith("model_trt.onnx") and plan["flags"] == ["INT8"] and plan["calibrator"]
    assert plan["calibration_batches"] == 1 and trt.cuda.copies == 1 and trt.cuda.freed == 1
    assert T.calibration_cache_valid(s.calib_cache, sha256_file(folder / "model_trt.onnx"))[0]
    assert not (folder / "model_trt_int8.onnx").exists()
    assert read_sidecar(s.engine).extra["calibration"]["source"] == f"{calib_dir} (8 images)"
    s2 = dataclasses.replace(s, calib_images=None, force=True)  # the cache alone: no batches, no CUDA copies
    T.build_engine(s2, log=_quiet)
    assert trt.record["plans"][-1]["calibration_batches"] == 0 and trt.cuda.copies == 1


def test_tensorrt10_takes_the_strongly_typed_path_only_when_asked(folder, fake_env):
    trt = fake_env(10, version="10.13.0")
    s = T.resolve_settings(_args(onnx=str(folder / "model_trt.onnx"), fp16=True, typing="strongly-typed"))
    T.build_engine(s, log=_quiet)
    plan = trt.record["plans"][-1]
    assert Path(plan["parsed"]).name == "model_trt_fp16.onnx" and plan["flags"] == [] and plan["network_flags"] == 2
    fp16_graph = str(folder / "model_trt_fp16.onnx")
    with pytest.raises(ValueError, match="made for the strongly typed path"):
        T.build_engine(T.resolve_settings(_args(onnx=fp16_graph, fp16=True, force=True)), log=_quiet)


def test_a_reduced_precision_graph_needs_its_own_flag(folder, exported):
    fp16_graph = exported["files"]["trt_fp16"]["onnx"]
    with pytest.raises(ValueError, match="is a fp16 graph but no precision flag was given"):
        T.resolve_settings(_args(onnx=fp16_graph))
    with pytest.raises(ValueError, match="pass --fp16"):
        T.resolve_settings(_args(onnx=fp16_graph, int8=True))
    assert T.resolve_settings(_args(onnx=fp16_graph, fp16=True)).engine.name == "model_fp16.engine"


def test_old_tensorrt_stops_in_one_line(folder, fake_env, capsys):
    fake_env(8, version="8.5.3")
    assert T.main(["--onnx", str(folder / "model_trt.onnx"), "--fp16"]) == T.EXIT_UNAVAILABLE
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "older than 8.6" in err[0]


def test_builder_of_the_installed_version(fake_env):
    assert B.EngineBuilder(fake_env(11), log=_quiet).path.name == "strongly-typed"
    assert B.EngineBuilder(fake_env(10), log=_quiet).path.name == "builder-flags"


# --------------------------------------------------------------------------- TF32
@pytest.mark.parametrize("major", [10, 11])
def test_an_fp32_engine_clears_tf32_unless_asked(folder, fake_env, major):
    """TensorRT runs FP32 layers as TF32 by default (10 and 11, both paths): an FP32 build clears the flag, --tf32
    sets it (and rebuilds the FP32 engine built without it); the sidecar and the report say which."""
    trt = fake_env(major)
    onnx = str(folder / "model_trt.onnx")
    rep = T.build_engine(T.resolve_settings(_args(onnx=onnx)), log=_quiet)
    plan = trt.record["plans"][-1]
    assert plan["tf32"] is False and plan["cleared_flags"] == ["TF32"] and "TF32" not in plan["flags"]
    side = read_sidecar(folder / "model_fp32.engine")
    assert side.precision == "fp32" and side.extra["tf32"] is False and side.extra["build_key"]["tf32"] is False
    assert rep["status"] == "built" and rep["tf32"] is False
    assert T.main(["--onnx", onnx, "--tf32", "--no-verify"]) == T.EXIT_OK
    plan = trt.record["plans"][-1]
    assert len(trt.record["plans"]) == 2 and plan["tf32"] is True and "TF32" in plan["flags"]
    assert not plan["cleared_flags"]
    side = read_sidecar(folder / "model_fp32.engine")
    assert side.extra["tf32"] is True and side.extra["build_key"]["tf32"] is True


def test_reduced_precision_engines_keep_tensorrts_tf32_default(folder, fake_env):
    trt = fake_env(10)
    s = T.resolve_settings(_args(onnx=str(folder / "model_trt.onnx"), fp16=True))
    T.build_engine(s, log=_quiet)
    plan = trt.record["plans"][-1]
    assert plan["flags"] == ["FP16"] and plan["tf32"] is True and not plan["cleared_flags"]
    assert read_sidecar(s.engine).extra["tf32"] is True
    b = T.EngineBuilder(types.SimpleNamespace(**{**vars(trt), "BuilderFlag": types.SimpleNamespace(FP16="FP16")}),
                        log=_quiet)
    assert b.set_tf32(False) is None and not b.config.cleared       # a TensorRT without the flag: nothing to clear


def test_tf32_help_says_fp32_means_fp32():
    text = " ".join(T.build_parser().format_help().split())
    assert "--tf32" in text and "Default: off for an FP32 engine" in text
