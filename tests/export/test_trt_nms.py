"""The NMS route of an engine (export/trt/nms.py) with mocks of TensorRT 10 and 11: a TensorRT
without EfficientNMS_TRT is detected before parsing (``--nms plugin`` refused in one line,
``--nms auto`` falls back with a note), ``--nms builtin`` parses the ONNX-NMS graph whose
NonMaxSuppression TensorRT maps to INMSLayer, the sidecar records the route, and on CPU that
graph (ONNX Runtime) agrees with the plugin's CPU reference."""
from __future__ import annotations

import shutil
from pathlib import Path

import onnx
import pytest

from export import trt as T
from export.trt import nms as N
from runtime.errors import BackendUnavailable
from runtime.metadata import read_sidecar, sha256_file
from tests.export.fake_tensorrt import FakeCuda, FakeDetector, fake_tensorrt
from tests.export.fake_tensorrt import cli_args as _args, quiet as _quiet


@pytest.fixture
def folder(exported, tmp_path) -> Path:
    """A fresh export folder: model_trt.onnx, model_nms.onnx, model_raw.onnx and their sidecars."""
    for graph in ("trt", "nms", "raw"):
        src = Path(exported["files"][graph]["onnx"])
        for suffix in (".onnx", ".json"):
            shutil.copy(src.with_suffix(suffix), tmp_path / f"{src.stem}{suffix}")
    return tmp_path


@pytest.fixture
def fake_env(monkeypatch):
    """``fake_env(major, plugins=("1",), cc=(8, 9))``: a fake tensorrt whose registry holds ``plugins``."""
    from export.trt import env

    def install(major: int, plugins: tuple[str, ...] = ("1",), cc=(8, 9)):
        trt, cuda = fake_tensorrt(major, plugins=plugins), FakeCuda(cc)
        monkeypatch.setattr(env, "import_tensorrt", lambda: (trt, None))
        monkeypatch.setattr(env, "import_cuda", lambda: (cuda, None))
        monkeypatch.setattr("runtime.backends.trt_backend.TRTDetector", FakeDetector)
        return trt
    return install


# --------------------------------------------------------------------------- the choice
@pytest.mark.parametrize("requested,registered,graph,route", [
    ("auto", ["1"], "trt", "plugin"), ("plugin", ["1"], "trt", "plugin"), ("auto", None, "trt", "plugin"),
    ("auto", [], "trt", "builtin"), ("builtin", ["1"], "trt", "builtin"), ("auto", ["1"], "nms", "builtin"),
    ("builtin", [], "nms", "builtin")])
def test_nms_route_choice(requested, registered, graph, route):
    r = N.choose_nms_route(requested, "11.4.0", registered, graph)
    assert r.name == route and r.reason and r.registered == registered
    assert r.sidecar()["layer"].startswith("INMSLayer" if route == "builtin" else "EfficientNMS_TRT")
    assert bool(r.sidecar()["differences_from_plugin"]) == (route == "builtin")
    if registered == [] and requested == "auto":
        assert r.reason.startswith("note:") and "--nms builtin" in r.reason


def test_nms_routes_that_do_not_exist():
    with pytest.raises(BackendUnavailable, match="registers no EfficientNMS_TRT version 1 .*--nms builtin"):
        N.choose_nms_route("plugin", "11.4.0", [])
    with pytest.raises(BackendUnavailable, match=r"registry: 2\)"):
        N.choose_nms_route("plugin", "11.4.0", ["2"], plugin_version="1")
    with pytest.raises(ValueError, match="no EfficientNMS_TRT node"):
        N.choose_nms_route("plugin", "11.4.0", ["1"], graph="nms")
    with pytest.raises(ValueError, match="--nms must be one of"):
        N.choose_nms_route("inms", "11.4.0", ["1"])


def test_candidate_limits_and_topk_sizes(exported):
    assert N.candidate_limit(None) == N.candidate_limit((8, 9)) == 3840
    assert N.candidate_limit((5, 3)) == N.candidate_limit((6, 2)) == 2000
    nms = Path(exported["files"]["nms"]["onnx"])
    ks = N.topk_sizes(onnx.load(str(nms)))
    meta = read_sidecar(nms)
    assert len(ks) == 2 and ks[1] == meta.nms.max_detections and ks[0] <= meta.nms.pre_nms_top_k
    assert N.graph_fits(nms, 3840)[0] and not N.graph_fits(nms, ks[0] - 1)[0]


# --------------------------------------------------------------------------- a TensorRT without the plugin
@pytest.mark.parametrize("major", [11, 10])
def test_without_the_plugin_nms_plugin_stops_in_one_line_before_parsing(folder, fake_env, capsys, major):
    trt = fake_env(major, plugins=())
    engine = folder / "m.engine"
    assert T.main(["--onnx", str(folder / "model_trt.onnx"), "--nms", "plugin", "--out", str(engine)]) == \
        T.EXIT_UNAVAILABLE
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "registers no EfficientNMS_TRT" in err[0] and "--nms builtin" in err[0], err
    assert trt.record["parsed"] == [] and trt.record["plans"] == [] and not engine.exists()
    assert not engine.with_name("m.build.json").exists()


def test_the_mock_parser_fails_on_a_missing_plugin_like_tensorrt(folder, fake_env):
    """What --nms plugin avoids: TensorRT's own parse error on the plugin node."""
    trt = fake_env(11, plugins=())
    b = T.EngineBuilder(trt, log=_quiet)
    with pytest.raises(T.BuildError, match="could not parse"):
        b.parse(folder / "model_trt.onnx")


@pytest.mark.parametrize("major,flags", [(11, []), (10, ["FP16"])])
def test_without_the_plugin_auto_takes_the_builtin_route_with_a_note(folder, fake_env, major, flags):
    trt = fake_env(major, plugins=())
    precision = {"fp16": True} if flags else {}
    lines: list[str] = []
    s = T.resolve_settings(_args(onnx=str(folder / "model_trt.onnx"), **precision))
    rep = T.build_engine(s, log=lines.append)
    plan = trt.record["plans"][-1]
    assert Path(plan["parsed"]).name == "model_nms.onnx" and plan["flags"] == flags
    assert plan["nms_layers"] == 1 and plan["plugin_layers"] == 0
    assert any(line.startswith("export.trt: note:") and "--nms builtin" in line for line in lines)
    side = read_sidecar(s.engine)
    assert side.extra["nms_route"]["name"] == "builtin" and side.extra["nms_route"]["graph"] == "model_nms.onnx"
    assert side.extra["build_key"]["nms"] == "builtin" and side.onnx_sha256 == sha256_file(folder / "model_nms.onnx")
    assert rep["verification"]["ok"] and rep["nms"]["cpu_parity_with_plugin"]["agreement"] >= 0.95


# --------------------------------------------------------------------------- --nms builtin
@pytest.mark.parametrize("major", [11, 10])
def test_nms_builtin_parses_the_onnx_nms_graph(folder, fake_env, major):
    trt = fake_env(major)  # the plugin is there: builtin is asked for
    s = T.resolve_settings(_args(onnx=str(folder / "model_trt.onnx"), nms="builtin"))
    rep = T.build_engine(s, log=_quiet)
    plan = trt.record["plans"][-1]
    assert trt.record["parsed"] == [str(folder / "model_nms.onnx")] and plan["nms_layers"] == 1
    side = read_sidecar(s.engine)
    route = side.extra["nms_route"]
    assert route["name"] == "builtin" and route["reason"] == "requested with --nms builtin"
    assert route["registered_plugin_versions"] == ["1"] and route["layer"].startswith("INMSLayer")
    assert any("IoU >= iou_threshold" in d for d in route["differences_from_plugin"])
    if major >= 11:  # the strongly typed path reads the parsed network's I/O types
        assert side.extra["io_types"]["num_detections"] == "int32"
        assert side.extra["io_types"]["detection_boxes"] == "float32"
    assert rep["verification"]["ok"] and rep["verification"]["agreement"] >= 0.95
    again = T.build_engine(s, log=_quiet)
    assert again["status"] == "cached" and len(trt.record["plans"]) == 1
    plugin = T.build_engine(T.resolve_settings(_args(onnx=str(folder / "model_trt.onnx"), nms="plugin")), log=_quiet)
    assert plugin["status"] == "built" and read_sidecar(s.engine).extra["nms_route"]["name"] == "plugin"
    assert trt.record["plans"][-1]["plugin_layers"] == 1 and trt.record["plans"][-1]["nms_layers"] == 0


def test_nms_builtin_from_the_nms_graph_itself(folder, fake_env, capsys, calib_dir):
    trt = fake_env(10, plugins=())
    s = T.resolve_settings(_args(onnx=str(folder / "model_nms.onnx"), int8=True, calib_images=str(calib_dir)))
    assert s.engine.name == "model_int8.engine"
    T.build_engine(s, log=_quiet, verify=False)
    plan = trt.record["plans"][-1]
    assert plan["parsed"].endswith("model_nms.onnx") and plan["flags"] == ["INT8"] and plan["calibrator"]
    assert T.main(["--onnx", str(folder / "model_nms.onnx"), "--nms", "plugin"]) == T.EXIT_UNAVAILABLE
    assert "no EfficientNMS_TRT node" in capsys.readouterr().err


def test_nms_builtin_on_the_strongly_typed_path_is_fp32_only(folder, fake_env):
    fake_env(11, plugins=())
    s = T.resolve_settings(_args(onnx=str(folder / "model_trt.onnx"), fp16=True))
    with pytest.raises(ValueError, match="builds FP32 only"):
        T.build_engine(s, log=_quiet)
    assert not s.engine.exists()


def test_candidates_beyond_the_tensorrt_limit_get_a_capped_graph(folder, fake_env, monkeypatch):
    trt = fake_env(11)
    k_pre = N.topk_sizes(onnx.load(str(folder / "model_nms.onnx")))[0]
    limit = max(k_pre // 2, 120)
    assert limit < k_pre
    monkeypatch.setattr(N, "candidate_limit", lambda cc: limit)
    s = T.resolve_settings(_args(onnx=str(folder / "model_trt.onnx"), nms="builtin"))
    rep = T.build_engine(s, log=_quiet)
    capped = folder / N.CAPPED_GRAPH
    assert trt.record["parsed"] == [str(capped)] and N.topk_sizes(onnx.load(str(capped)))[0] == limit
    meta = read_sidecar(capped)
    assert meta.graph == "nms" and meta.nms.pre_nms_top_k == limit and meta.extra["candidate_limit"] == limit
    assert meta.extra["source_sha256"] == sha256_file(folder / "model_raw.onnx")
    assert rep["verification"]["ok"] and read_sidecar(s.engine).extra["nms_route"]["graph"] == N.CAPPED_GRAPH
    src = N.builtin_source(s, T.choose_build_path("11.4.0"), None, log=_quiet)
    assert src.onnx == capped and src.how.startswith("reused")


def test_nms_builtin_needs_a_graph(folder, fake_env):
    fake_env(11)
    (folder / "model_nms.onnx").unlink()
    (folder / "model_raw.onnx").unlink()
    with pytest.raises(ValueError, match="run python -m export.onnx first"):
        T.build_engine(T.resolve_settings(_args(onnx=str(folder / "model_trt.onnx"), nms="builtin")), log=_quiet)


# --------------------------------------------------------------------------- CPU: builtin graph vs plugin
def test_builtin_graph_agrees_with_the_plugin_reference_on_cpu(exported):
    """model_nms.onnx in ONNX Runtime against the plugin's CPU reference of model_trt.onnx, on
    detector-like images (the differences -- IoU >= vs >, candidate cap, ties -- do not show)."""
    from export.data import synthetic_images
    p = N.route_parity(Path(exported["files"]["trt"]["onnx"]), Path(exported["files"]["nms"]["onnx"]),
                       synthetic_images(6, seed=11))
    assert p["images"] == 6 and p["detections"]["plugin"] > 0
    assert p["agreement"] >= 0.99 and p["detections"]["builtin"] == p["detections"]["plugin"]
    assert len(p["differences"]) == 3


def test_cli_has_the_nms_flag():
    assert T.build_parser().parse_args([]).nms == "auto"
    assert T.build_parser().parse_args(["--nms", "builtin"]).nms == "builtin"
    with pytest.raises(SystemExit):
        T.build_parser().parse_args(["--nms", "inms"])
