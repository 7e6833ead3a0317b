import pytest
import yaml

from distill.config import build_parser, resolve
from distill.presets import PRESETS


def test_precedence_defaults_preset_yaml_cli(tmp_path):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"epochs": 7, "lr": 0.2, "preset": "smoke"}))
    cfg = resolve({"config": str(tmp_path / "c.yaml"), "lr": "0.3"}, PRESETS)
    assert cfg.data.img_size == PRESETS["smoke"]["img_size"]     # from the preset
    assert cfg.optim.epochs == 7                                   # YAML beats the preset
    assert cfg.optim.lr == 0.3                                     # command line beats YAML
    assert cfg.optim.momentum == 0.9                               # dataclass default


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


def test_every_section_field_has_exactly_one_flag():
    import dataclasses

    from distill.config import FLAGS, SECTIONS
    places = [(f.section, f.field) for f in FLAGS.values()]
    assert len(places) == len(set(places))
    assert set(places) == {(s, f.name) for s, cls in SECTIONS.items() for f in dataclasses.fields(cls)}
    for preset in PRESETS.values():                      # presets are flat dicts of flag names
        assert set(preset) <= set(FLAGS)


def test_nested_flat_and_mixed_yaml_give_the_same_config(tmp_path):
    from distill.config import TrainConfig, load_yaml, save_yaml
    nested = {"optim": {"epochs": 7, "lr": 0.2}, "kd": {"methods": "gan", "weights": {"gan": 0.5}}, "data": {"data": "shapes"}}
    flat = {"epochs": 7, "lr": 0.2, "kd": "gan", "kd_weights": {"gan": 0.5}, "data": "shapes"}
    mixed = {"optim": {"epochs": 7}, "lr": 0.2, "kd": {"methods": "gan"}, "kd_weights": {"gan": 0.5}, "data": "shapes"}
    a, b, c = (TrainConfig.from_dict(d) for d in (nested, flat, mixed))
    assert a == b == c and a.optim.epochs == 7 and a.kd.weights == {"gan": 0.5}
    assert a.to_flat()["kd_mbox_weight"] == a.kd.mbox_weight and TrainConfig.from_dict(a.to_flat()) == a
    assert TrainConfig.from_dict(a.to_dict()) == a
    save_yaml(a, tmp_path / "c.yaml")
    assert load_yaml(tmp_path / "c.yaml") == a
    assert a.replace(epochs="9", device="cpu").optim.epochs == 9 and a.optim.epochs == 7


def test_nested_config_errors_name_the_key(tmp_path):
    from distill.config import TrainConfig
    (tmp_path / "c.yaml").write_text("optim:\n  lrr: 0.1\n")
    with pytest.raises(ValueError, match=r"unknown config key 'optim.lrr'. Did you mean 'lr'"):
        resolve({"config": str(tmp_path / "c.yaml")}, PRESETS)
    with pytest.raises(ValueError, match="'epochs' is given twice"):
        TrainConfig.from_dict({"epochs": 3, "optim": {"epochs": 4}})
    with pytest.raises(ValueError, match="cannot use 'x' as int"):
        TrainConfig.from_dict({"data": {"img_size": "x"}})
    with pytest.raises(ValueError, match="nms.iou_threshold"):
        TrainConfig.from_dict({"iou_threshold": 2.0})
