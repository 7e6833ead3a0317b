"""PyTorch backend: a training checkpoint run eagerly (CPU or CUDA, optional FP16 on CUDA).

It is the parity reference: its postprocess is distill's own (``distill.postprocess``, the one
training-time evaluation uses), not the numpy reference the exported raw graph gets.
torch and distill are imported when a detector is built, never at module import.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from runtime.classifier import TEXT_PROB, Classifier, region_output, text_meta
from runtime.detector import Detector, Detections, detections_from_nms
from runtime.errors import BackendUnavailable


class TorchDetector(Detector):
    """``.pt`` checkpoint (or run folder: best.pt, else last.pt) -> Detector.

    ``infer`` returns the raw graph's outputs (decoded normalised xyxy ``boxes`` [B, N, 4] and
    softmax ``scores`` [B, N, C + 1], float32 numpy) so timings compare with the raw ONNX graph;
    on CUDA the copy back to the host is the synchronisation point.
    """

    kind = "raw"

    def __init__(self, checkpoint: Any, device: str = "cpu", fp16: bool = False, use_ema: bool = True,
                 threads: int | None = None) -> None:
        import torch

        from distill.checkpoint import load_checkpoint, meta_from_checkpoint, model_from_checkpoint

        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError) as e:
            raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}") from e
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise BackendUnavailable(f"PyTorch backend: device {device!r} asked for but CUDA is not available here")
        if dev.type not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
        if fp16 and dev.type != "cuda":
            raise ValueError("fp16 needs a CUDA device (PyTorch CPU half-precision convolutions are slow "
                             "or missing); pass device='cuda'")
        if threads is not None:
            torch.set_num_threads(int(threads))
        ckpt = load_checkpoint(checkpoint)
        if ckpt.get("task") == "text":
            raise ValueError(f"{ckpt['path']} is a text / non-text classifier checkpoint ({ckpt['model_name']}), not "
                             f"a detector: open it with runtime.load_classifier")
        meta = meta_from_checkpoint(ckpt)
        if fp16:
            meta.precision = "fp16"
        super().__init__(meta)
        self.checkpoint_path = Path(ckpt["path"])
        self.checkpoint = {k: v for k, v in ckpt.items() if k not in ("model", "optimizer", "scheduler", "ema",
                                                                    "discriminators", "rng")}
        self.device = dev
        self.fp16 = bool(fp16)
        model = model_from_checkpoint(ckpt, use_ema=use_ema).to(dev)
        self.model = model.half() if fp16 else model
        self.anchors = model.anchors(tuple(meta.input_size)).to(dev)
        self.name = f"pytorch-{dev.type}" + ("-fp16" if fp16 else "")
        self._torch = torch

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        from distill.postprocess import decode_outputs

        torch = self._torch
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device, non_blocking=True)
            if self.fp16:
                x = x.half()
            loc, conf = self.model(x)
            boxes, scores = decode_outputs(loc.float(), conf.float(), self.anchors, self.model.box_coder)
            return {"boxes": boxes.float().cpu().numpy(), "scores": scores.cpu().numpy()}

    def postprocess(self, outputs: dict[str, np.ndarray], orig_hw: np.ndarray) -> list[Detections]:
        from distill.postprocess import select_detections

        torch = self._torch
        nms = self.meta.nms
        with torch.inference_mode():
            dets = select_detections(
                torch.from_numpy(outputs["boxes"]), torch.from_numpy(outputs["scores"]),
                score_threshold=nms.score_threshold, iou_threshold=nms.iou_threshold,
                max_detections=nms.max_detections, pre_nms_top_k=nms.pre_nms_top_k,
                class_agnostic=nms.class_agnostic,
            )
        b, k = len(dets), max([len(d["scores"]) for d in dets] + [1])
        num = np.zeros((b, 1), np.int32)
        boxes = np.zeros((b, k, 4), np.float32)
        scores = np.zeros((b, k), np.float32)
        classes = np.zeros((b, k), np.int32)
        for i, d in enumerate(dets):
            n = len(d["scores"])
            num[i, 0] = n
            boxes[i, :n] = d["boxes"].numpy()
            scores[i, :n] = d["scores"].numpy()
            classes[i, :n] = d["labels"].numpy() - 1
        return detections_from_nms(num, boxes, scores, classes, orig_hw, self.meta.num_classes, self.meta.resize_mode,
                                   self.meta.input_size)


def open_model(path: Path, *, device: str = "cpu", provider: str | None = None, fp16: bool = False,
               **kwargs: Any) -> Detector:
    """A ``.pt`` / ``.pth`` checkpoint or a run folder (best.pt, else last.pt). ``provider`` ("cpu" /
    "cuda", checked by :func:`runtime.load.load_detector`) adds nothing to ``device``."""
    return TorchDetector(path, device=device, fp16=fp16, **kwargs)


# ----------------------------------------------------------------------------- text / non-text classifier
def checkpoint_task(path: Any) -> str:
    """"text" for a text / non-text classifier checkpoint (file or run folder), else "detect"; ValueError when
    it cannot be read."""
    from distill.checkpoint import Checkpoint
    from distill.text.models import TEXT_MODELS

    ck = Checkpoint.load(path)
    return "text" if ck.model_name in TEXT_MODELS or (ck.extra or {}).get("task") == "text" else "detect"


class TorchClassifier(Classifier):
    """A text classifier checkpoint (``.pt`` or run folder; EMA weights when present) run eagerly on ``device``.

    ``infer`` returns what the exported graph returns (:mod:`runtime.classifier`): ``text_prob`` float32 [B]
    (sigmoid of the image logit) and ``region_prob_<g>`` float32 [B, g, g] (sigmoid of the region logits)."""

    def __init__(self, checkpoint: Any, device: str = "cpu", threads: int | None = None, use_ema: bool = True) -> None:
        import torch

        from distill.checkpoint import Checkpoint, check_finite_weights, load_weights
        from distill.text.models import TEXT_MODELS, create_text_model

        ck = Checkpoint.load(checkpoint)
        if ck.model_name not in TEXT_MODELS:
            raise ValueError(f"{ck.path} is a {ck.model_name} detector checkpoint, not a text / non-text classifier "
                             f"({', '.join(TEXT_MODELS)}): open it with runtime.load_detector")
        super().__init__(text_meta(ck.model_name, ck.extra, str(ck.path)), Path(str(ck.path)).name)
        if threads is not None:
            torch.set_num_threads(int(threads))
        weights = ck.ema if use_ema and ck.ema else ck.model
        check_finite_weights(weights, str(ck.path))
        model = create_text_model(ck.model_name, **ck.model_kwargs)
        load_weights(model, weights, str(ck.path), f"the {ck.model_name} {ck.model_kwargs} it names")
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise BackendUnavailable(f"PyTorch backend: device {device!r} asked for but CUDA is not available here")
        self.model = model.eval().to(self.device)
        self.meta.extra["params"] = sum(p.numel() for p in model.parameters())
        self.checkpoint = ck
        self.name = f"pytorch-{self.device.type}"
        self._torch = torch

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        torch = self._torch
        with torch.inference_mode():
            out = self.model(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device))
            probs = {TEXT_PROB: torch.sigmoid(out["image_logit"])}
            probs.update({region_output(g): torch.sigmoid(out["region_logits"][g]) for g in self.grids})
            return {k: v.float().cpu().numpy() for k, v in probs.items()}
