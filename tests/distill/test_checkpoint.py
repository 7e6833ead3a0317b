import torch

from distill.checkpoint import load_checkpoint, meta_from_checkpoint, model_from_checkpoint
from tests.helpers import make_tiny_checkpoint


def test_tiny_checkpoint_round_trip(tmp_path):
    p = make_tiny_checkpoint(tmp_path / "m.pt")
    ck = load_checkpoint(p)
    m = model_from_checkpoint(ck)
    loc, conf = m(torch.zeros(1, 3, 64, 64))
    assert conf.shape[-1] == 4
    meta = meta_from_checkpoint(ck)
    assert meta.input_size == (64, 64) and meta.category_ids == [1, 3, 5]


def test_bad_checkpoint(tmp_path):
    import pytest
    (tmp_path / "x.pt").write_bytes(b"junk")
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        load_checkpoint(tmp_path / "x.pt")
    with pytest.raises(ValueError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_checkpoint_written_once_read_back(tmp_path):
    import pytest

    from distill.checkpoint import FORMAT_VERSION, Checkpoint
    from distill.config import TrainConfig
    from distill.models import create_model
    cfg = TrainConfig.from_dict({"model_kwargs": {"width_mult": 0.25}, "img_size": 64, "kd": "gan"})
    m = create_model(cfg.model.name, 2, **cfg.model.kwargs)
    ck = Checkpoint.create(cfg, m, ["a", "b"], [3, 7], epoch=4, step=40, extra={"gan_state": {"step": 3}})
    ck.save(tmp_path / "run" / "last.pt")
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["last.pt"]        # no temporary file left
    raw = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert raw["format_version"] == FORMAT_VERSION and raw["config"] == cfg.to_dict() and raw["nms"] == cfg.nms.to_dict()
    back = Checkpoint.load(tmp_path / "run")                                     # a folder: its best.pt, else last.pt
    assert back.train_config() == cfg and back.epoch == 4 and back.extra == {"gan_state": {"step": 3}}
    assert back.category_ids == [3, 7] and back.path == str(tmp_path / "run" / "last.pt")
    assert load_checkpoint(tmp_path / "run")["gan_state"] == {"step": 3}
    torch.save({**raw, "format_version": FORMAT_VERSION + 1}, tmp_path / "new.pt")
    with pytest.raises(ValueError, match="newer than this code reads"):
        Checkpoint.load(tmp_path / "new.pt")
    torch.save({"model": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a checkpoint of this project"):
        Checkpoint.load(tmp_path / "other.pt")
