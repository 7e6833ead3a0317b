"""Runs and checkpoints written by the code before the config had sections still load (tests/fixtures/v1_run).

The fixtures' flat ``config.yaml`` files go through the config loader, their checkpoint dicts (plain, and
distillation's with its parts at the top level) through ``Checkpoint.load`` and ``model_from_checkpoint``,
and the distillation run is accepted by ``--resume``. Checkpoints written now are format 2 and load too.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from distill.checkpoint import FORMAT_VERSION, Checkpoint, load_checkpoint, model_from_checkpoint
from distill.config import TrainConfig, load_yaml, save_yaml
from distill.runs import resume_config

V1 = Path(__file__).parent / "fixtures" / "v1_run"
RUNS = {"plain": V1 / "plain" / "best.pt", "kd": V1 / "kd" / "last.pt"}
KD_PARTS = ("kd_modules", "discriminators", "gan_state", "kd_optimizers")


@pytest.mark.parametrize("run", ["plain", "kd"])
def test_flat_config_yaml_loads_with_every_value(run, tmp_path):
    saved = yaml.safe_load((V1 / run / "config.yaml").read_text())
    cfg = load_yaml(V1 / run / "config.yaml")
    flat = cfg.to_flat()
    assert {k: flat[k] for k in saved} == saved
    assert cfg.data.img_size == 64 and cfg.model.kwargs["width_mult"] == 0.1
    assert cfg.kd.methods == ("gan+soft" if run == "kd" else "none")
    save_yaml(cfg, tmp_path / "config.yaml")                       # written now: nested by section
    nested = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert list(nested) == ["model", "data", "optim", "kd", "nms", "run"]
    assert load_yaml(tmp_path / "config.yaml") == cfg


@pytest.mark.parametrize("run", ["plain", "kd"])
def test_v1_checkpoint_loads_and_its_model_runs(run):
    ck = Checkpoint.load(RUNS[run])
    assert ck.model_name == "ssdlite_mobilenetv2" and ck.num_classes == 8 and len(ck.class_names) == 8
    assert ck.config["data"]["img_size"] == 64 and ck.config["kd"]["methods"] == ("gan+soft" if run == "kd" else "none")
    assert ck.train_config() == load_yaml(V1 / run / "config.yaml")
    assert ck.optimizer and ck.rng and ck.step > 0
    assert sorted(ck.extra) == (sorted(KD_PARTS) if run == "kd" else [])
    model = model_from_checkpoint(ck)
    loc, conf = model(torch.rand(2, 3, 64, 64))
    assert loc.shape[0] == conf.shape[0] == 2 and loc.shape[-1] == 4 and conf.shape[-1] == 9
    assert torch.isfinite(loc).all() and torch.isfinite(conf).all()
    model2 = model_from_checkpoint(str(RUNS[run]))                  # the path form of the wrapper
    for k, v in model.state_dict().items():
        torch.testing.assert_close(model2.state_dict()[k], v, msg=k)


def test_v1_dict_wrapper_keeps_its_shape():
    d = load_checkpoint(RUNS["kd"])
    assert d["config"]["kd"] == "gan+soft" and d["config"]["img_size"] == 64          # flat, as before
    assert d["gan_state"]["methods"] == ["gan", "soft"] and "kd_modules" in d           # top level, as before
    assert d["path"] == str(RUNS["kd"])


@pytest.mark.parametrize("run", ["plain", "kd"])
def test_v1_checkpoint_rewritten_as_format_2(run, tmp_path):
    ck = Checkpoint.load(RUNS[run])
    ck.save(tmp_path / "c.pt")
    raw = torch.load(tmp_path / "c.pt", weights_only=True)
    assert raw["format_version"] == FORMAT_VERSION and "path" not in raw
    assert set(raw["config"]) == {"model", "data", "optim", "kd", "nms", "run"}
    assert not set(KD_PARTS) & set(raw) and sorted(raw["extra"]) == sorted(ck.extra)
    again = Checkpoint.load(tmp_path / "c.pt")
    assert again.config == ck.config and again.epoch == ck.epoch and again.extra.keys() == ck.extra.keys()
    for k, v in ck.model.items():
        torch.testing.assert_close(again.model[k], v, msg=k)


def test_resume_of_the_v1_distillation_run_is_accepted():
    cfg, ck = resume_config(str(V1 / "kd"), {"resume": str(V1 / "kd"), "device": "cpu", "epochs": "3"})
    assert isinstance(cfg, TrainConfig) and cfg.kd.methods == "gan+soft" and cfg.kd.teacher.endswith("plain/best.pt")
    assert cfg.optim.epochs == 3 and cfg.run.device == "cpu" and cfg.run.out == str(V1 / "kd")
    assert ck.epoch == 1 and ck.extra["gan_state"]["methods"] == ["gan", "soft"]
    with pytest.raises(ValueError, match="cannot change: lr"):
        resume_config(str(V1 / "kd"), {"resume": str(V1 / "kd"), "lr": "0.1"})


def test_resume_of_the_v1_plain_run_is_accepted():
    cfg, ck = resume_config(str(RUNS["plain"]), {"resume": str(RUNS["plain"])})
    assert cfg.kd.methods == "none" and cfg.optim.epochs == 1 and ck.epoch == 0 and ck.extra == {}
    assert ck.scheduler and ck.optimizer["param_groups"]


def test_v1_export_loads_and_runs_like_its_checkpoint():
    """The NMS graph and sidecar written before: today's runtime reads the sidecar, runs the graph, and its
    detections are the old checkpoint's through today's PyTorch backend."""
    import numpy as np

    from runtime.load import load_detector

    onnx_det = load_detector(str(V1 / "export" / "model_nms.onnx"))
    torch_det = load_detector(str(RUNS["plain"]))
    assert onnx_det.meta.class_names == torch_det.meta.class_names and onnx_det.meta.input_size == (64, 64)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (48 + 8 * i, 64, 3), dtype=np.uint8) for i in range(3)]
    got, ref = onnx_det(images), torch_det(images)
    assert len(got) == 3
    for g, r in zip(got, ref):
        assert len(g["boxes"]) == len(r["boxes"])
        np.testing.assert_allclose(np.sort(g["scores"]), np.sort(r["scores"]), atol=1e-4)
