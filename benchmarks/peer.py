"""The peer row: torchvision's SSDlite320-MobileNetV3-Large at our input size and thresholds.

Random weights (``weights=None, weights_backbone=None``): it is a speed yardstick, not a rival in
accuracy, so it has no mAP. End-to-end is torchvision as it is used: decode, then
``model([float CHW tensors in 0..1])`` (its own resize + normalise, backbone, head, decode, NMS,
boxes back to original pixels). Model-only is backbone + head on a normalised [B, 3, H, W] batch,
the counterpart of our graphs' ``infer``.

The OpenVINO peer rows (:func:`openvino_peer`): our own NMS graph in OpenVINO with its defaults and a
latency or throughput hint, as a CPU user would run it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from runtime.detector import Detector, Detections
from runtime.metadata import ModelMeta
from runtime.preprocess import load_image

PEER_NAME = "peer-torchvision-ssdlite320"


class PeerDetector(Detector):
    """torchvision ``ssdlite320_mobilenet_v3_large`` with ``num_classes = C + 1``, input ``H x W`` of
    ``meta.input_size``, ``score_thresh`` / ``nms_thresh`` / ``detections_per_img`` from ``meta.nms``."""

    kind = "peer"

    def __init__(self, meta: ModelMeta, device: str = "cpu") -> None:
        import torch
        from torchvision.models.detection import ssdlite320_mobilenet_v3_large

        super().__init__(meta)
        self.name = PEER_NAME
        self._torch = torch
        self.device = torch.device(device)
        h, w = meta.input_size
        torch.manual_seed(0)
        model = ssdlite320_mobilenet_v3_large(
            weights=None, weights_backbone=None, num_classes=meta.num_classes + 1,
            score_thresh=meta.nms.score_threshold, nms_thresh=meta.nms.iou_threshold,
            detections_per_img=meta.nms.max_detections,
        )
        # The builder fixes 320 x 320; the transform takes the size (fixed_size is (W, H)).
        model.transform.min_size = (min(h, w),)
        model.transform.max_size = max(h, w)
        model.transform.fixed_size = (w, h)
        self.model = model.eval().to(self.device)

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        torch = self._torch
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device)
            feats = list(self.model.backbone(x).values())
            out = self.model.head(feats)
            return {k: v.float().cpu().numpy() for k, v in out.items()}

    def __call__(self, images: Any) -> Any:
        torch = self._torch
        single = not isinstance(images, (list, tuple))
        srcs = [images] if single else list(images)
        tensors = [torch.from_numpy(np.require(load_image(s), requirements="W")).permute(2, 0, 1).to(self.device).float().div_(255.0)
                   for s in srcs]
        with torch.inference_mode():
            res = self.model(tensors)
        out: list[Detections] = [{"boxes": r["boxes"].cpu().numpy().astype(np.float32),
                                  "scores": r["scores"].cpu().numpy().astype(np.float32),
                                  "labels": r["labels"].cpu().numpy().astype(np.int64)} for r in res]
        return out[0] if single else out


OPENVINO_PEER = "peer-openvino"


def openvino_peer(path: Any, hint: str = "latency", threads: int | None = None, streams: int | None = None) -> Any:
    """The same model in OpenVINO, as a CPU user would run it: its ONNX-NMS graph compiled with only a
    performance hint (``hint`` "latency" or "throughput"; ``threads`` / ``streams`` when the
    benchmark pins them) and every other setting OpenVINO's default, inference precision included
    (bf16 on CPUs with AVX512-BF16 / AMX). Our pre- and postprocessing around it, as any user of the
    model needs them. Named ``peer-openvino-<hint>``."""
    from runtime.backends.openvino_backend import OVDetector

    det = OVDetector(path, threads=threads, hint=hint, streams=streams, precision=None)
    det.name = f"{OPENVINO_PEER}-{hint}"
    return det
