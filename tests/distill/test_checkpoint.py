import torch

from distill.checkpoint import load_checkpoint, meta_from_checkpoint, model_from_checkpoint
from helpers import make_tiny_checkpoint


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
