"""Training configuration: dataclass defaults <- preset <- YAML (``--config``) <- command line.

Unknown keys are rejected with a did-you-mean; the resolved config is written next to the run as
``config.yaml``. Every field is a command-line flag (``batch_size`` -> ``--batch-size``) whose help
text is the field's ``help`` metadata, so ``--help`` is always complete.
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml


def _f(default, help: str, **kw):
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: json.loads(json.dumps(d)), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class TrainConfig:
    # what to train
    model: str = _f("ssdlite_mobilenetv2", "registered model name (see --list-models)")
    model_kwargs: dict = _f({}, "extra builder kwargs as JSON, e.g. '{\"width_mult\": 0.5}'")
    pretrained_backbone: str | None = _f(None, "local file with ImageNet backbone weights (torchvision layout); nothing is downloaded")
    init_weights: str | None = _f(None, "checkpoint whose 'model' weights initialise the whole detector (same architecture), "
                                  "e.g. the ablation's shared warm start")
    # data
    data: str = _f("shapes", "training set: 'shapes' (embedded), 'coco:ANN.json:IMG_DIR' or 'voc:ROOT:SPLIT'")
    val_data: str | None = _f(None, "validation set, same forms as --data (default: the matching validation split)")
    data_root: str = _f("data", "where the embedded dataset is generated and cached")
    shapes_train: int = _f(1500, "embedded dataset: number of training images")
    shapes_val: int = _f(300, "embedded dataset: number of validation images")
    shapes_seed: int = _f(0, "embedded dataset: generator seed")
    on_bad_sample: str = _f("error", "bad image/annotation: 'error' (stop, naming it) or 'skip' (warn and count)", choices=["error", "skip"])
    img_size: int = _f(300, "square network input side in pixels")
    augment: str = _f("ssd", "training augmentation: 'ssd' (photometric, zoom-out, IoU crop, flip: SSD's recipe), "
                      "'light' (photometric + flip: learns several times faster on short schedules), 'none' (resize only)",
                      choices=["ssd", "light", "none"])
    zoom_out_max: float = _f(4.0, "--augment ssd: largest zoom-out factor (SSD: 4; 1 disables zoom-out)")
    mean: list = _f([0.485, 0.456, 0.406], "RGB mean on the 0..1 pixel scale")
    std: list = _f([0.229, 0.224, 0.225], "RGB std on the 0..1 pixel scale")
    # optimisation
    epochs: int = _f(30, "training epochs")
    batch_size: int = _f(32, "images per batch")
    optimizer: str = _f("sgd", "optimizer: 'sgd' (momentum, the papers' recipes) or 'adamw' (faster from scratch on short schedules)", choices=["sgd", "adamw"])
    lr: float = _f(0.01, "peak learning rate")
    momentum: float = _f(0.9, "SGD momentum")
    weight_decay: float = _f(5e-4, "weight decay (not applied to norms and biases)")
    schedule: str = _f("cosine", "learning-rate schedule after warm-up", choices=["cosine", "multistep"])
    milestones: list = _f([], "multistep: epochs at which lr is multiplied by --gamma")
    gamma: float = _f(0.1, "multistep decay factor")
    warmup_epochs: float = _f(1.0, "linear warm-up length in epochs (fractions allowed)")
    clip_grad: float | None = _f(10.0, "max gradient norm (None: no clipping)")
    amp: bool = _f(False, "mixed precision (CUDA only; ignored with a warning on CPU)")
    ema: bool = _f(False, "keep an exponential moving average of the weights and evaluate it")
    ema_decay: float = _f(0.9998, "EMA decay per step")
    neg_pos_ratio: float = _f(3.0, "hard negative mining ratio")
    match_iou: float = _f(0.5, "anchor/ground-truth IoU for a positive match")
    # knowledge distillation (distill/kd; defaults are the papers' values)
    kd: str = _f("none", "distillation methods joined by '+': gan (GAN-KD, the paper's method), soft (Hinton soft labels), "
                 "fitnet (L2 hints), began (BEGAN discriminator), ab (activation-boundary pre-training); 'none': plain training")
    teacher: str | None = _f(None, "teacher checkpoint (best.pt / last.pt or its run folder); required with --kd")
    kd_weights: dict = _f({}, "per-method loss weights as JSON, e.g. '{\"gan\": 1, \"soft\": 1}'; missing ones use "
                          "gan 1, soft 1, fitnet 1, began 0.2 (b, text-nontext eq. 2), ab 1; weight 0 = same pipeline without the term")
    kd_mbox_weight: float = _f(1.0, "lambda of GAN-KD loss (3): weight of the multibox loss in the student stage")
    kd_temperature: float = _f(2.0, "soft-label KD temperature T (loss scaled by T^2)")
    ab_margin: float = _f(1.0, "activation-boundary margin u (text-nontext eq. 1)")
    ab_iters: int = _f(200, "activation-boundary pre-training iterations (only with --kd ...+ab)")
    gan_lr: float = _f(5e-4, "fixed Adam learning rate of stages 1-3, student and discriminators (GAN-KD paper: 5e-4)")
    gan_threshold: float = _f(5e-4, "stage 2 ends when the epoch's mean adversarial loss is below this (paper: 5e-4)")
    gan_d_pretrain_iters: int = _f(75, "stage 1, discriminator pre-learning iterations (paper: 75)")
    gan_d_finetune_iters: int = _f(75, "stage 3, discriminator fine-tuning iterations (paper: 75)")
    gan_student_max_epochs: int = _f(10, "cap on the epochs of one stage-2 round when the threshold is not reached")
    gan_student_max_iters: int = _f(0, "if > 0: a stage-2 round ends after this many student iterations instead of "
                                    "--gan-student-max-epochs (keeps the frozen discriminators fresh on short runs)")
    gan_conditional: bool = _f(False, "discriminators also see the input image, average-pooled to each map's size: the "
                               "conditional D(x, y) of GAN-KD eq. (2) (Tables 2-3 draw the unconditional D(y))")
    gan_post_epochs: int = _f(80, "stage 4, student post-learning epochs, counted in --epochs (paper: 180 adversarial + 80 post)")
    gan_post_lr: float = _f(5e-4, "stage 4 SGD initial learning rate (paper: 5e-4)")
    gan_post_step: int = _f(20, "stage 4: divide the learning rate by 1/--gan-post-gamma every N post epochs (paper: 20)")
    gan_post_gamma: float = _f(0.1, "stage 4 step decay factor (paper: 0.1)")
    disc_max_width: int | None = _f(None, "cap on discriminator hidden widths (None: the teacher's map widths, Tables 2-3)")
    began_gamma: float = _f(0.75, "BEGAN equilibrium n (text-nontext eq. 6)")
    began_fk: float = _f(1e-3, "BEGAN k_t learning rate f_k (text-nontext eq. 6)")
    kd_collapse_patience: int = _f(3, "student epochs with the discriminators pinned at 100 %% accuracy before recovery")
    kd_max_skips: int = _f(5, "consecutive non-finite steps skipped before rolling back to the last good state")
    # postprocess (EfficientNMS semantics; copied into every export's sidecar)
    score_threshold: float = _f(0.01, "postprocess: minimum class score")
    iou_threshold: float = _f(0.45, "postprocess: NMS IoU threshold")
    max_detections: int = _f(100, "postprocess: detections kept per image")
    pre_nms_top_k: int = _f(4096, "postprocess: candidates per image before NMS")
    class_agnostic: bool = _f(False, "postprocess: NMS across classes")
    # run
    out: str | None = _f(None, "run folder (default: runs/<model>)")
    seed: int = _f(0, "random seed (data order, augmentation, init)")
    device: str = _f("auto", "'auto', 'cpu', 'cuda' or 'cuda:N'")
    workers: int = _f(2, "data-loading worker processes")
    eval_every: int = _f(1, "evaluate every N epochs (and always after the last)")
    eval_images: int | None = _f(None, "evaluate on at most this many validation images (None: all)")
    resume: str | None = _f(None, "run folder (or last.pt) to continue exactly where it stopped")
    preset: str | None = _f(None, "named recipe: smoke, quick, ablate, voc, coco (see distill/presets.py)")
    config: str | None = _f(None, "YAML file with any of these keys")

    def nms(self):
        from runtime.metadata import NMSConfig
        cfg = NMSConfig(score_threshold=self.score_threshold, iou_threshold=self.iou_threshold,
                        max_detections=self.max_detections, pre_nms_top_k=self.pre_nms_top_k,
                        class_agnostic=self.class_agnostic)
        cfg.validate()
        return cfg

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


FIELD_NAMES = [f.name for f in fields(TrainConfig)]


def check_keys(d: dict, source: str) -> None:
    for k in d:
        if k not in FIELD_NAMES:
            close = difflib.get_close_matches(k, FIELD_NAMES, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ValueError(f"{source}: unknown config key '{k}'.{hint}")


def _coerce(name: str, value: Any) -> Any:
    """Type-check a value against the field's declared type (YAML gives ints for floats etc.)."""
    f = next(f for f in fields(TrainConfig) if f.name == name)
    t = str(f.type)
    if value is None:
        if "None" not in t:
            raise ValueError(f"config key '{name}' cannot be null")
        return None
    try:
        if t.startswith("bool"):
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError
                return value.lower() in ("true", "1", "yes")
            return bool(value)
        if t.startswith("int"):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if t.startswith("float"):
            return float(value)
        if t.startswith("dict"):
            v = json.loads(value) if isinstance(value, str) else value
            if not isinstance(v, dict):
                raise ValueError
            return v
        if t.startswith("list"):
            v = json.loads(value) if isinstance(value, str) and value.strip().startswith("[") else value
            if isinstance(v, str):
                v = [float(x) if "." in x else int(x) for x in v.split(",") if x.strip()]
            return list(v)
        return str(value)
    except (ValueError, TypeError, json.JSONDecodeError):
        raise ValueError(f"config key '{name}': cannot use {value!r} as {t}") from None


def build_parser(prog: str = "python -m distill.train", description: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=description,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        kw = {"help": f.metadata["help"], "default": argparse.SUPPRESS}
        if str(f.type).startswith("bool"):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
        else:
            if "choices" in f.metadata:
                kw["choices"] = f.metadata["choices"]
            p.add_argument(flag, metavar=f.name.upper(), **kw)
        if "default" not in f.metadata["help"]:
            p._option_string_actions[flag].help += f" (default: {default})"
    return p


def resolve(cli: dict, presets: dict[str, dict]) -> TrainConfig:
    """defaults <- preset <- YAML <- command line. ``cli`` holds only the flags the user gave."""
    yaml_d: dict = {}
    if cli.get("config"):
        path = Path(cli["config"])
        if not path.is_file():
            raise ValueError(f"--config: file not found: {path}")
        try:
            yaml_d = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ValueError(f"--config: {path} is not valid YAML: {e}") from None
        if not isinstance(yaml_d, dict):
            raise ValueError(f"--config: {path} must hold a mapping of config keys, got {type(yaml_d).__name__}")
        check_keys(yaml_d, str(path))
    preset_name = cli.get("preset") or yaml_d.get("preset")
    preset_d = {}
    if preset_name:
        if preset_name not in presets:
            close = difflib.get_close_matches(preset_name, presets, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ValueError(f"unknown preset '{preset_name}'.{hint} Available: {', '.join(sorted(presets))}")
        preset_d = presets[preset_name]
    merged = {**preset_d, **yaml_d, **cli}
    check_keys(merged, "command line")
    cfg = TrainConfig(**{k: _coerce(k, v) for k, v in merged.items()})
    cfg.preset = preset_name
    return cfg


def save_yaml(cfg: TrainConfig, path: Path) -> None:
    tmp = Path(str(path) + ".tmp")
    tmp.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    tmp.replace(path)


def load_yaml(path: Path) -> TrainConfig:
    d = yaml.safe_load(Path(path).read_text()) or {}
    check_keys(d, str(path))
    return TrainConfig(**{k: _coerce(k, v) for k, v in d.items()})
