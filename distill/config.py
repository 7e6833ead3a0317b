"""Training configuration: a dataclass of sections, filled as defaults <- preset <- YAML (``--config``) <- command line.

The sections are ``model``, ``data``, ``optim``, ``kd`` (everything that only matters to distillation),
``nms`` (:class:`runtime.metadata.NMSConfig`, the postprocess copied into every export's sidecar) and
``run``. The command line stays flat: every field is a flag named after it (``optim.batch_size`` is
``--batch-size``; a field's ``flag`` metadata names the few whose flag differs, e.g. ``kd.methods`` is
``--kd``) with the field's help text, so ``--help`` is always complete; :data:`FLAGS` is the table from flag
name to (section, field). Presets are flat dicts of flag names. A YAML file may be flat (the ``config.yaml``
of runs written before sections existed), nested like the ``config.yaml`` written next to every run, or a
mix; unknown keys are rejected with a did-you-mean.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from runtime.atomic import write_text_atomic
from runtime.cli import ProductParser
from runtime.errors import did_you_mean, unknown_name_error
from runtime.metadata import NMSConfig
from runtime.sizes import EXPECTED as SIZE_EXPECTED, is_size, size_value

from .presets import MODEL_DEFAULTS


def _f(default: Any, help: str, *, flag: str | None = None, choices: tuple[str, ...] | None = None) -> Any:
    """A config field: its default, its ``--help`` text, its flag name when not the field's, its choices."""
    meta = {"help": help, "flag": flag, "choices": choices}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: copy.deepcopy(d), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class ModelConfig:
    """The detector: a registered model, its builder kwargs, its initial weights and its loss's matching."""
    name: str = _f("ssdlite_mobilenetv2", "registered model name (see --list-models)", flag="model")
    kwargs: dict[str, Any] = _f({}, "extra builder kwargs as JSON, e.g. '{\"width_mult\": 0.5}'", flag="model_kwargs")
    pretrained_backbone: str | None = _f(None, "local file with ImageNet backbone weights (torchvision layout); "
                                         "nothing is downloaded")
    init_weights: str | None = _f(None, "checkpoint whose 'model' weights initialise the whole detector (same "
                                  "architecture), e.g. the ablation's shared warm start")
    neg_pos_ratio: float = _f(3.0, "hard negative mining ratio")
    match_iou: float = _f(0.5, "anchor/ground-truth IoU for a positive match")


@dataclass
class DataConfig:
    """Datasets, the embedded dataset's parameters, augmentation, input size, pixel normalisation, loading."""
    data: str = _f("shapes", "training set: 'shapes' (embedded), 'shapes-small' (embedded, small objects: 512 px "
                   "images, most boxes < 32^2 px at 256 px), 'coco:ANN.json:IMG_DIR' or 'voc:ROOT:SPLIT'")
    val_data: str | None = _f(None, "validation set, same forms as --data (default: the matching validation split)")
    data_root: str = _f("data", "where the embedded dataset is generated and cached")
    shapes_train: int = _f(1500, "embedded dataset: number of training images")
    shapes_val: int = _f(300, "embedded dataset: number of validation images")
    shapes_seed: int = _f(0, "embedded dataset: generator seed")
    on_bad_sample: str = _f("error", "bad image/annotation: 'error' (stop, naming it) or 'skip' (warn and count)",
                            choices=("error", "skip"))
    img_size: int | list[int] = _f(300, "network input size in pixels: S (square S x S) or HxW, height first "
                                   "(384x512: 384 high, 512 wide); the anchors follow the input")
    text_size: str | None = _f(None, "--task text: input size HxW, e.g. 128x192 (default: --img-size)")
    resize_mode: str = _f("stretch", "resize to the input: 'stretch' (warp the whole image, SSD's) or 'letterbox' "
                          "(keep the aspect ratio, pad to the input); used by training, evaluation and written to "
                          "every export's sidecar", flag="resize", choices=("stretch", "letterbox"))
    augment: str = _f("ssd", "training augmentation: 'ssd' (photometric, zoom-out, IoU crop, flip: SSD's recipe), "
                      "'light' (photometric + flip: learns several times faster on short schedules), 'none' "
                      "(resize only)", choices=("ssd", "light", "none"))
    zoom_out_max: float = _f(4.0, "--augment ssd: largest zoom-out factor (SSD: 4; 1 disables zoom-out)")
    mean: list[float] = _f([0.485, 0.456, 0.406], "RGB mean on the 0..1 pixel scale")
    std: list[float] = _f([0.229, 0.224, 0.225], "RGB std on the 0..1 pixel scale")
    workers: int = _f(2, "data-loading worker processes")


@dataclass
class OptimConfig:
    """Optimisation of the detector: length, batch, optimizer, learning-rate schedule, AMP and EMA."""
    epochs: int = _f(30, "training epochs")
    batch_size: int = _f(32, "images per batch")
    optimizer: str = _f("sgd", "optimizer: 'sgd' (momentum, the papers' recipes) or 'adamw' (faster from scratch "
                        "on short schedules)", choices=("sgd", "adamw"))
    lr: float = _f(0.01, "peak learning rate")
    momentum: float = _f(0.9, "SGD momentum")
    weight_decay: float = _f(5e-4, "weight decay (not applied to norms and biases)")
    schedule: str = _f("cosine", "learning-rate schedule after warm-up ('plateau': --task text only, lr / 10 when "
                       "the epoch's training loss stops falling, the text / non-text paper's)",
                       choices=("cosine", "multistep", "plateau"))
    milestones: list[float] = _f([], "multistep: epochs at which lr is multiplied by --gamma")
    gamma: float = _f(0.1, "multistep decay factor")
    warmup_epochs: float = _f(1.0, "linear warm-up length in epochs (fractions allowed)")
    clip_grad: float | None = _f(10.0, "max gradient norm (None: no clipping)")
    amp: bool = _f(False, "mixed precision (CUDA only; ignored with a warning on CPU)")
    ema: bool = _f(False, "keep an exponential moving average of the weights and evaluate it")
    ema_decay: float = _f(0.9998, "EMA decay per step")
    sync_bn: bool = _f(False, "under torchrun on GPUs: BatchNorm statistics over the whole global batch "
                       "(SyncBatchNorm; not available on CPU / gloo)")


@dataclass
class KDConfig:
    """Knowledge distillation (distill/kd); the defaults are the papers' values. With ``methods`` 'none' the
    run is plain training and nothing in this section changes it."""
    methods: str = _f("none", "distillation methods joined by '+': gan (GAN-KD, the paper's method), soft (Hinton "
                      "soft labels), fitnet (L2 hints), began (BEGAN discriminator), ab (activation-boundary "
                      "pre-training), sr (feature super-resolution); 'none': plain training", flag="kd")
    teacher: str | None = _f(None, "teacher checkpoint (best.pt / last.pt or its run folder); required with --kd")
    weights: dict[str, float] = _f({}, "per-method weights as JSON, e.g. '{\"gan\": 1, \"soft\": 1}': each method "
                                   "steps with its own Adam state at --kd-lr x its weight (missing ones: 1, began 0.2 "
                                   "= b of text-nontext eq. 2); weight 0 = the same pipeline without the term",
                                   flag="kd_weights")
    mbox_weight: float = _f(1.0, "lambda of GAN-KD loss (3): weight of the multibox loss in the student stage",
                            flag="kd_mbox_weight")
    temperature: float = _f(2.0, "soft-label KD temperature T (loss scaled by T^2)", flag="kd_temperature")
    ab_margin: float = _f(1.0, "activation-boundary margin u (text-nontext eq. 1)")
    ab_iters: int = _f(200, "activation-boundary pre-training iterations (only with --kd ...+ab)")
    ab_epochs: int = _f(2, "--task text: activation-boundary pre-training epochs before the --epochs of soft-label "
                        "/ adversarial training (only with --kd ab+...)")
    began_b: float = _f(0.2, "--task text: weight b of the adversarial term (text-nontext eq. 2)")
    gan_lr: float = _f(5e-4, "fixed Adam learning rate of stages 1-3, student and discriminators (GAN-KD paper: "
                       "5e-4)")
    gan_threshold: float = _f(5e-4, "stage 2 ends when the epoch's mean adversarial loss is below this (paper: 5e-4)")
    gan_d_pretrain_iters: int = _f(75, "stage 1, discriminator pre-learning iterations (paper: 75)")
    gan_d_finetune_iters: int = _f(75, "stage 3, discriminator fine-tuning iterations (paper: 75)")
    gan_student_max_epochs: int = _f(10, "cap on the epochs of one stage-2 round when the threshold is not reached")
    gan_student_max_iters: int = _f(0, "if > 0: a stage-2 round ends after this many student iterations instead of "
                                    "--gan-student-max-epochs (keeps the frozen discriminators fresh on short runs)")
    gan_conditional: bool = _f(False, "discriminators also see the input image, average-pooled to each map's size: "
                               "the conditional D(x, y) of GAN-KD eq. (2) (Tables 2-3 draw the unconditional D(y))")
    gan_post_epochs: int = _f(80, "stage 4, student post-learning epochs, counted in --epochs (paper: 180 "
                              "adversarial + 80 post)")
    gan_post_lr: float = _f(5e-4, "stage 4 SGD initial learning rate (paper: 5e-4)")
    gan_post_step: int = _f(20, "stage 4: divide the learning rate by 1/--gan-post-gamma every N post epochs "
                            "(paper: 20)")
    gan_post_gamma: float = _f(0.1, "stage 4 step decay factor (paper: 0.1)")
    disc_max_width: int | None = _f(None, "cap on discriminator hidden widths (None: the teacher's map widths, "
                                    "Tables 2-3)")
    began_gamma: float = _f(0.75, "BEGAN equilibrium n (text-nontext eq. 6)")
    began_fk: float = _f(1e-3, "BEGAN k_t learning rate f_k (text-nontext eq. 6)")
    collapse_patience: int = _f(3, "student epochs with the discriminators pinned at 100 %% accuracy before "
                                "recovery", flag="kd_collapse_patience")
    max_skips: int = _f(5, "consecutive non-finite steps skipped before rolling back to the last good state",
                        flag="kd_max_skips")
    lr: float | None = _f(None, "Adam learning rate of the distillation terms' own optimizer state (None: --gan-lr); "
                          "the detection terms keep theirs, so no distillation term can shrink the detection step",
                          flag="kd_lr")
    gan_d_lr: float | None = _f(None, "discriminators' Adam learning rate (None: --gan-lr)")
    gan_betas: list[float] = _f([0.5, 0.999], "Adam betas of stages 1-3 (detection, distillation and discriminator "
                                "optimizers); the paper gives none: 0.5 / 0.999 is the GAN convention")
    gan_disc_output: str = _f("patch", "discriminator outputs: 'patch' (the GAN-KD text: 3x3 maps for DNet1-4, 2x2 "
                              "for DNet5 at 300 px) or 'table' (Tables 2-3 read literally: one logit per image)",
                              choices=("patch", "table"))
    gan_loss: str = _f("bce", "adversarial loss: 'bce' (GAN-KD eq. 2) or 'lsgan' (least squares, Mao et al. 2017)",
                       choices=("bce", "lsgan"))
    gan_real_label: float = _f(1.0, "discriminator target for teacher maps (1: eq. 2; 0.9: one-sided label smoothing)")
    gan_warmup: float = _f(0.0, "fraction of the adversarial stages' student iterations over which the distillation "
                           "step ramps from 0 to --kd-lr (0: none, as in the paper)")
    gan_post_weight_decay: float = _f(5e-4, "stage 4 SGD weight decay (SSD's 5e-4)")
    adapters: str = _f("all", "1x1 adapters on the student maps: 'all' (learnable on all six maps, identity-initialised "
                       "where widths match) or 'mismatch' (only where widths differ)", flag="kd_adapters",
                       choices=("all", "mismatch"))
    standardize: bool = _f(True, "standardise teacher and adapted student maps per channel with the teacher's frozen "
                           "statistics before discriminators and feature losses", flag="kd_standardize")
    rec_maps: list[int] = _f([0, 1], "--kd ...+rec: feature maps of GAN-KD eq. (1)'s reconstruction term (0: the "
                             "highest resolution)")
    rec_loss: str = _f("pearson", "--kd ...+rec: 'pearson' (1 - correlation) or 'mse' (standardised MSE)",
                       choices=("pearson", "mse"))
    rec_masked: bool = _f(False, "--kd ...+rec: only the cells inside ground-truth boxes (fine-grained feature "
                          "imitation, Wang et al. 2019)")
    rec_init_ratio: float = _f(0.75, "--kd ...+rec: the term is scaled once, at its first step, to this multiple of "
                               "the detection loss")
    clip_grad: float | None = _f(None, "distillation runs: max gradient norm of every optimizer step (None: no "
                                 "clipping, as in the paper)", flag="kd_clip_grad")
    sr_maps: list[int] = _f([0, 1], "--kd ...+sr: feature maps of the super-resolution term (0: the highest resolution)")
    sr_source: str = _f("teacher", "--kd ...+sr: z_HR from the frozen 'teacher' or the 'student' itself (no gradient) "
                        "on the batch at twice the resolution", choices=("teacher", "student"))
    sr_target: str = _f("teacher", "--kd ...+sr: p* of D_cls per location: 'teacher' (the teacher's object probability) "
                        "or 'gt' (1 inside a ground-truth box)", choices=("teacher", "gt"))
    sr_alpha: float = _f(1e-3, "--kd ...+sr: alpha, weight of L_adv (the slides give none: SRGAN's 1e-3)")
    sr_beta: float = _f(1.0, "--kd ...+sr: beta, weight of L_cls (the slides give none)")
    sr_gamma: float = _f(1.0, "--kd ...+sr: gamma, weight of L_reg (the slides give none)")
    sr_width: int = _f(32, "--kd ...+sr: hidden width of the generator and the discriminator (G at 300 px, "
                       "ssdlite_mobilenetv2: 0.29 M params, 60 M MACs, 9 %% of the student's)")
    sr_blocks: int = _f(2, "--kd ...+sr: residual blocks of the generator")
    sr_small: float = _f(32.0, "--kd ...+sr: L_reg counts anchors matched to boxes of side sqrt(w h) below this (px; "
                         "COCO small: 32)")
    sr_region: str = _f("all", "--kd ...+sr: where L_MSE and L_TV compare G(z_LR) with z_HR: 'all' (every location, the "
                        "slides' sums) or 'small' (the cells inside ground-truth boxes of side below --sr-small, as "
                        "SOD-MTGAN / Perceptual GAN super-resolve small objects' regions only)", choices=("all", "small"))
    sr_mse_weight: float = _f(1.0, "--kd ...+sr: weight of the reconstruction term L_MSE (the slides: 1; 0 drops it)")
    sr_tv_weight: float = _f(1.0, "--kd ...+sr: weight of the smoothness term L_TV (the slides: 1; 0 drops it)")
    sr_init_ratio: float = _f(0.25, "--kd ...+sr: L_MSE + L_TV (their unit-weight sum; --sr-mse-weight / "
                              "--sr-tv-weight multiply after, so 0 removes a term without re-weighting the other) are "
                              "scaled once, at their first step, to this multiple of the detection loss, as --rec-init-"
                              "ratio does for L_REC (standardised maps of two networks differ in scale: unscaled, L_MSE "
                              "starts ~6x the detection loss); 0: the slides' weights as they are. 0.25 from the "
                              "shapes-small pilots (docs/ablation-sr.md): at 0.75 the detection loss lagged and APl fell")
    sr_keep_g: bool = _f(False, "--kd ...+sr: keep the generator G in the student: its heads read G(z) on --sr-maps in "
                         "training and at inference, and every export includes G (sets the model kwarg sr_generator "
                         "from --sr-maps / --sr-width / --sr-blocks; SSD students only)")
    sr_grad: str = _f("student", "--kd ...+sr: what the SR terms train: 'student' (G and, through z_LR, the student's "
                      "backbone: a distillation signal) or 'g' (G alone, the slides' min over theta_G; the backbone "
                      "learns from the detection loss only; needs --sr-keep-g, or the exported student would not "
                      "change)", choices=("student", "g"))


# The nms section is the runtime's own NMSConfig (the sidecar schema); its fields' help texts:
NMS_HELP: dict[str, str] = {
    "score_threshold": "postprocess: minimum class score", "iou_threshold": "postprocess: NMS IoU threshold",
    "max_detections": "postprocess: detections kept per image",
    "pre_nms_top_k": "postprocess: candidates per image before NMS",
    "class_agnostic": "postprocess: NMS across classes",
}


@dataclass
class RunConfig:
    """Where the run lives and how it is driven (output folder, seed, device, evaluation cadence, sources)."""
    out: str | None = _f(None, "run folder (default: runs/<model>)")
    task: str = _f("detect", "what is trained: 'detect' (SSD detectors) or 'text' (the text / non-text image "
                   "classifier: --model textnet_teacher or textnet_student, --data text or text:DIR)",
                   choices=("detect", "text"))
    seed: int = _f(0, "random seed (data order, augmentation, init)")
    device: str = _f("auto", "'auto', 'cpu', 'cuda' or 'cuda:N'")
    eval_every: int = _f(1, "evaluate every N epochs (and always after the last)")
    eval_images: int | None = _f(None, "evaluate on at most this many validation images (None: all)")
    resume: str | None = _f(None, "run folder (or last.pt) to continue exactly where it stopped")
    preset: str | None = _f(None, "named recipe: smoke, quick, ablate, voc, coco (see distill/presets.py)")
    config: str | None = _f(None, "YAML file with any of these keys")
    tensorboard: bool = _f(False, "also write TensorBoard event files to RUN/tensorboard (needs: pip install tensorboard)")
    keep_last: int = _f(2, "how many of the run's latest checkpoints to keep: last.pt and the ones before it "
                        "(last-prev.pt, last-prev2.pt, ...); --resume falls back to the newest readable one")
    select_best: bool = _f(True, "keep the epoch with the best validation mAP as best.pt (--no-select-best: the last "
                           "epoch, so a reported number is not selected on the reported images)")
    channels_last: bool = _f(True, "detectors, their teacher and discriminators in the channels-last (NHWC) memory "
                             "format: convolutions 1.6x faster to train on a CPU (student forward + backward, "
                             "ssdlite_mobilenetv2, batch 16, 256 px, one thread: 2.3 vs 3.7 s), the layout tensor "
                             "cores want under --amp; --no-channels-last: the contiguous (NCHW) format")


SECTIONS: dict[str, type] = {"model": ModelConfig, "data": DataConfig, "optim": OptimConfig, "kd": KDConfig,
                             "nms": NMSConfig, "run": RunConfig}


@dataclass
class TrainConfig:
    """The resolved configuration of one training run (see the module docstring)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    kd: KDConfig = field(default_factory=KDConfig)
    nms: NMSConfig = field(default_factory=NMSConfig)
    run: RunConfig = field(default_factory=RunConfig)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config") -> TrainConfig:
        """A config from a flat (flag names), nested (sections) or mixed mapping; missing keys take their
        defaults. ValueError naming ``source`` and the key on an unknown key or a value of the wrong type."""
        flat = flatten_config(d, source)
        nested = nest_config({k: _coerce(k, v) for k, v in flat.items()})
        cfg = cls(**{name: section(**nested.get(name, {})) for name, section in SECTIONS.items()})
        cfg.nms.validate()
        validate_config(cfg, source)
        _keep_sr_generator(cfg, source)
        return cfg

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Nested plain dict, one key per section (what ``config.yaml`` and checkpoints hold)."""
        return {name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS}

    def to_flat(self) -> dict[str, Any]:
        """Flat plain dict keyed by flag name, in ``--help`` order (for comparing and printing)."""
        return {name: copy.deepcopy(getattr(getattr(self, f.section), f.field)) for name, f in FLAGS.items()}

    def replace(self, **flags: Any) -> TrainConfig:
        """A copy with some flags changed (flag names; values coerced as on the command line)."""
        return TrainConfig.from_dict({**self.to_flat(), **flags}, "replace()")


@dataclass(frozen=True)
class Flag:
    """One command-line flag ``--NAME`` (underscores written as dashes): sets ``cfg.<section>.<field>``."""
    name: str
    section: str
    field: str
    help: str
    choices: tuple[str, ...] | None = None


def _flag_table() -> dict[str, Flag]:
    table: dict[str, Flag] = {}
    for section, cls in SECTIONS.items():
        for f in fields(cls):
            meta = f.metadata if "help" in f.metadata else {"help": NMS_HELP[f.name]}
            name = meta.get("flag") or f.name
            table[name] = Flag(name, section, f.name, meta["help"], meta.get("choices"))
    return table


# Flat flag name -> (section, field, help): the one table between the command line / presets / flat YAML
# and the sections, in --help order (section by section).
FLAGS: dict[str, Flag] = _flag_table()
_FLAG_OF: dict[tuple[str, str], str] = {(f.section, f.field): f.name for f in FLAGS.values()}


def _field(flag: Flag) -> dataclasses.Field:
    return next(f for f in fields(SECTIONS[flag.section]) if f.name == flag.field)


def flag_default(name: str) -> Any:
    """The dataclass default of flag ``name`` (a fresh copy for lists and dicts)."""
    f = _field(FLAGS[name])
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


def flatten_config(d: dict[str, Any], source: str = "config") -> dict[str, Any]:
    """Flat, nested or mixed mapping -> flat dict keyed by flag name; values are not checked.

    A key that names a section and holds a mapping is a section (``optim: {lr: 0.1}``); any other key is a
    flag name (``lr: 0.1``; the flat ``model`` / ``data`` / ``kd`` flags hold strings). ValueError naming
    ``source`` on an unknown key (with a did-you-mean) or a key given twice.
    """
    if not isinstance(d, dict):
        raise ValueError(f"{source}: expected a mapping of config keys, got {type(d).__name__}")
    flat: dict[str, Any] = {}
    for key, value in d.items():
        if key in SECTIONS and isinstance(value, dict):
            items = [(_flag_name(key, k, source), v) for k, v in value.items()]
        elif key in FLAGS:
            items = [(key, value)]
        else:
            raise ValueError(f"{source}: unknown config key '{key}'.{did_you_mean(str(key), [*FLAGS, *SECTIONS])}")
        for name, v in items:
            if name in flat:
                raise ValueError(f"{source}: config key '{name}' is given twice")
            flat[name] = v
    return flat


def _flag_name(section: str, key: str, source: str) -> str:
    if (section, key) not in _FLAG_OF:
        names = [f.name for f in fields(SECTIONS[section])]
        raise ValueError(f"{source}: unknown config key '{section}.{key}'.{did_you_mean(str(key), names)}")
    return _FLAG_OF[(section, key)]


def nest_config(d: dict[str, Any], source: str = "config") -> dict[str, dict[str, Any]]:
    """Flat, nested or mixed mapping -> nested dict (sections in order, only the keys given); values unchecked."""
    nested: dict[str, dict[str, Any]] = {}
    for name, value in flatten_config(d, source).items():
        flag = FLAGS[name]
        nested.setdefault(flag.section, {})[flag.field] = value
    return {s: nested[s] for s in SECTIONS if s in nested}


def _coerce(name: str, value: Any) -> Any:
    """Check a flag's value against its field's declared type (YAML gives ints for floats, the CLI strings)."""
    f = _field(FLAGS[name])
    t = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    if value is None:
        if "None" not in t:
            raise ValueError(f"config key '{name}' cannot be null")
        return None
    convert = size_value if name == "img_size" else _CONVERT[t.split("[")[0].split(" ")[0]]
    try:
        return convert(value)
    except (ValueError, TypeError, json.JSONDecodeError):
        hint = f": expected {SIZE_EXPECTED}" if convert is size_value else ""
        raise ValueError(f"config key '{name}': cannot use {value!r} as {t}{hint}") from None


def _to_bool(value: Any) -> bool:
    if isinstance(value, str):
        if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError
        return value.lower() in ("true", "1", "yes")
    return bool(value)


def _to_int(value: Any) -> int:
    if isinstance(value, float) and not value.is_integer():
        raise ValueError
    return int(value)


def _to_dict(value: Any) -> dict:
    v = json.loads(value) if isinstance(value, str) else value
    if not isinstance(v, dict):
        raise ValueError
    return dict(v)


def _to_list(value: Any) -> list:
    v = json.loads(value) if isinstance(value, str) and value.strip().startswith("[") else value
    if isinstance(v, str):
        v = [float(x) if "." in x else int(x) for x in v.split(",") if x.strip()]
    return list(v)


_CONVERT = {"bool": _to_bool, "int": _to_int, "float": float, "dict": _to_dict, "list": _to_list, "str": str}


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


# flag -> (holds for a usable value, what is expected): checked on every config, whatever its source.
_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "epochs": (lambda v: v >= 1, "an integer >= 1"),
    "batch_size": (lambda v: v >= 1, "an integer >= 1"),
    "keep_last": (lambda v: v >= 1, "an integer >= 1 (last.pt and the checkpoints before it)"),
    "eval_every": (lambda v: v >= 1, "an integer >= 1 (epochs between evaluations; the last epoch is always "
                                     "evaluated)"),
    "eval_images": (lambda v: v is None or v >= 1, "an integer >= 1 or null (all)"),
    "workers": (lambda v: v >= 0, "an integer >= 0"),
    "img_size": (is_size, SIZE_EXPECTED),
    "lr": (lambda v: _finite(v) and v > 0, "a finite number > 0"),
    "momentum": (lambda v: _finite(v) and 0 <= v < 1, "a number in [0, 1)"),
    "weight_decay": (lambda v: _finite(v) and v >= 0, "a finite number >= 0"),
    "warmup_epochs": (lambda v: _finite(v) and v >= 0, "a finite number >= 0"),
    "gamma": (lambda v: _finite(v) and v > 0, "a finite number > 0"),
    "clip_grad": (lambda v: v is None or (_finite(v) and v > 0), "a number > 0 or null (no clipping)"),
    "ema_decay": (lambda v: _finite(v) and 0 < v < 1, "a number in (0, 1)"),
    "neg_pos_ratio": (lambda v: _finite(v) and v > 0, "a finite number > 0"),
    "match_iou": (lambda v: _finite(v) and 0 < v <= 1, "a number in (0, 1]"),
    "zoom_out_max": (lambda v: _finite(v) and v >= 1, "a number >= 1 (1 disables zoom-out)"),
    "mean": (lambda v: len(v) == 3 and all(_finite(x) for x in v), "3 RGB numbers on the 0..1 scale"),
    "std": (lambda v: len(v) == 3 and all(_finite(x) and x > 0 for x in v), "3 RGB numbers > 0 on the 0..1 scale"),
    "milestones": (lambda v: all(_finite(x) and x >= 0 for x in v) and list(v) == sorted(v),
                   "epochs >= 0 in increasing order"),
    "kd_temperature": (lambda v: _finite(v) and v > 0, "a finite number > 0"),
    "gan_lr": (lambda v: _finite(v) and v > 0, "a finite number > 0"),
    "kd_lr": (lambda v: v is None or (_finite(v) and v > 0), "a number > 0 or null (--gan-lr)"),
    "gan_d_lr": (lambda v: v is None or (_finite(v) and v > 0), "a number > 0 or null (--gan-lr)"),
    "gan_post_lr": (lambda v: _finite(v) and v > 0, "a finite number > 0"),
    "ab_epochs": (lambda v: v >= 0, "an integer >= 0"),
    "began_b": (lambda v: _finite(v) and v >= 0, "a finite number >= 0"),
    "sr_alpha": (lambda v: _finite(v) and v >= 0, "a finite number >= 0"),
    "sr_beta": (lambda v: _finite(v) and v >= 0, "a finite number >= 0"),
    "sr_gamma": (lambda v: _finite(v) and v >= 0, "a finite number >= 0"),
    "sr_width": (lambda v: v >= 1, "an integer >= 1"),
    "sr_blocks": (lambda v: v >= 0, "an integer >= 0"),
    "sr_mse_weight": (lambda v: _finite(v) and v >= 0, "a finite number >= 0"),
    "sr_tv_weight": (lambda v: _finite(v) and v >= 0, "a finite number >= 0"),
    "sr_init_ratio": (lambda v: _finite(v) and v >= 0, "a finite number >= 0"),
}


def validate_config(cfg: TrainConfig, source: str = "config") -> None:
    """ValueError naming the flag, the value and what is expected for the first value no run can use."""
    flat = cfg.to_flat()
    for name, (ok, expected) in _RULES.items():
        value = flat[name]
        try:
            good = bool(ok(value))
        except TypeError:
            good = False
        if not good:
            raise ValueError(f"{source}: --{name.replace('_', '-')} {value!r}: expected {expected}")
    if cfg.optim.schedule == "plateau" and cfg.run.task != "text":
        raise ValueError(f"{source}: --schedule plateau is the text classifier's (--task text); detectors take "
                         "cosine or multistep")


def _keep_sr_generator(cfg: TrainConfig, source: str) -> None:
    """--sr-keep-g: the student keeps the generator G of --kd ...+sr, so its model kwarg ``sr_generator`` is
    set from --sr-maps / --sr-width / --sr-blocks (what checkpoints, exports and the runtime rebuild the model
    from). ValueError naming ``source`` when --kd has no sr, or when --sr-grad g has no kept G to train."""
    if cfg.kd.sr_grad == "g" and not cfg.kd.sr_keep_g:
        raise ValueError(f"{source}: --sr-grad g trains G alone, and G is training-only without --sr-keep-g: the "
                         "exported student would not change; add --sr-keep-g or use --sr-grad student")
    if not cfg.kd.sr_keep_g:
        return
    if "sr" not in [m.strip().lower() for m in str(cfg.kd.methods).split("+")]:
        raise ValueError(f"{source}: --sr-keep-g keeps the generator of --kd ...+sr, but --kd is "
                         f"{cfg.kd.methods!r}: add sr (e.g. --kd sr) or drop --sr-keep-g")
    spec = {"maps": [int(k) for k in cfg.kd.sr_maps], "width": cfg.kd.sr_width, "blocks": cfg.kd.sr_blocks}
    cfg.model.kwargs = {**cfg.model.kwargs, "sr_generator": spec}


def check_run_folder(out: str | None) -> None:
    """ValueError when ``--out`` (the run folder, created when missing) or a folder above it is a file."""
    if not out:
        return
    folder = Path(out)
    for p in (folder, *folder.parents):
        if p.exists() and not p.is_dir():
            where = "" if p == folder else f" ({p} is a file)"
            raise ValueError(f"--out {folder}{where}: expected a run folder (created when missing), found a file")


def build_parser(prog: str = "python -m distill.train", description: str | None = None) -> argparse.ArgumentParser:
    """One flag per :data:`FLAGS` row; parsed values are flat (flag names) and only those the user gave."""
    p = ProductParser(prog=prog, description=description, allow_abbrev=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    for flag in FLAGS.values():
        option = "--" + flag.name.replace("_", "-")
        help_text = flag.help if "default" in flag.help else f"{flag.help} (default: {flag_default(flag.name)})"
        kw: dict[str, Any] = {"help": help_text, "default": argparse.SUPPRESS}
        if _field(flag).type == "bool":
            p.add_argument(option, action=argparse.BooleanOptionalAction, **kw)
        else:
            if flag.choices:
                kw["choices"] = list(flag.choices)
            p.add_argument(option, metavar=flag.name.upper(), **kw)
    return p


def _read_yaml(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        found = "a folder" if path.is_dir() else "nothing"
        raise ValueError(f"{what}: file not found: {path} (found {found}; expected a YAML file)")
    try:
        d = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as e:
        raise ValueError(f"{what}: {path} is not UTF-8 text (byte {e.start}: {e.reason}); expected a YAML "
                         f"file") from None
    except yaml.YAMLError as e:
        raise ValueError(f"{what}: {path} is not valid YAML: {' '.join(str(e).split())}") from None
    if not isinstance(d, dict):
        raise ValueError(f"{what}: {path} must hold a mapping of config keys, got {type(d).__name__}")
    return d


def resolve(cli: dict[str, Any], presets: dict[str, dict]) -> TrainConfig:
    """defaults <- preset <- YAML <- command line. ``cli`` holds only the flags the user gave (flag names)."""
    yaml_d: dict[str, Any] = {}
    if cli.get("config"):
        path = Path(cli["config"])
        yaml_d = flatten_config(_read_yaml(path, "--config"), str(path))
    preset_name = cli.get("preset") or yaml_d.get("preset")
    preset_d: dict[str, Any] = {}
    if preset_name:
        if preset_name not in presets:
            raise unknown_name_error("preset", preset_name, sorted(presets))
        preset_d = presets[preset_name]
    layers = {**preset_d, **yaml_d, **flatten_config(cli, "command line")}
    cfg = TrainConfig.from_dict(layers, "command line")
    if cfg.model.name in MODEL_DEFAULTS:     # the model's own recipe values, under every layer given
        cfg = TrainConfig.from_dict({**MODEL_DEFAULTS[cfg.model.name], **layers}, "command line")
    cfg.run.preset = preset_name
    check_run_folder(cfg.run.out)
    return cfg


def save_yaml(cfg: TrainConfig, path: Path) -> None:
    """The resolved config, nested by section, written atomically."""
    write_text_atomic(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def load_yaml(path: Path) -> TrainConfig:
    """A run's ``config.yaml``: nested (written now) or flat (written before sections existed)."""
    path = Path(path)
    return TrainConfig.from_dict(_read_yaml(path, "config"), str(path))
