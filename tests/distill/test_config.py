import pytest
import yaml

from distill.config import build_parser, resolve
from distill.presets import PRESETS


def test_precedence_defaults_preset_yaml_cli(tmp_path):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"epochs": 7, "lr": 0.2, "preset": "smoke"}))
    cfg = resolve({"config": str(tmp_path / "c.yaml"), "lr": "0.3"}, PRESETS)
    assert cfg.img_size == PRESETS["smoke"]["img_size"]     # from the preset
    assert cfg.epochs == 7                                   # YAML beats the preset
    assert cfg.lr == 0.3                                     # command line beats YAML
    assert cfg.momentum == 0.9                               # dataclass default


def test_unknown_keys_are_rejected_with_a_suggestion(tmp_path):
    (tmp_path / "c.yaml").write_text("batchsize: 4\n")
    with pytest.raises(ValueError, match="Did you mean 'batch_size'"):
        resolve({"config": str(tmp_path / "c.yaml")}, PRESETS)
    with pytest.raises(ValueError, match="unknown preset 'quik'. Did you mean 'quick'"):
        resolve({"preset": "quik"}, PRESETS)
    with pytest.raises(ValueError, match="cannot use 'abc'"):
        resolve({"epochs": "abc"}, PRESETS)


def test_every_field_has_a_flag_with_help():
    p = build_parser()
    text = p.format_help()
    for flag in ("--data", "--val-data", "--model", "--epochs", "--batch-size", "--img-size", "--lr", "--out", "--seed",
                 "--device", "--workers", "--resume", "--preset", "--config", "--pretrained-backbone", "--amp"):
        assert flag in text
    args = vars(p.parse_args(["--epochs", "3", "--no-amp"]))
    assert args == {"epochs": "3", "amp": False}
