"""Detection postprocess with exactly the semantics of TensorRT's EfficientNMS_TRT plugin (DESIGN.md):

1. scores = softmax(conf); the background column (0) is never a candidate;
2. candidates are the (anchor, class) pairs whose score is >= ``score_threshold`` (the plugin's test);
3. per image, only the ``pre_nms_top_k`` best candidates by score go on;
4. NMS per class (``torchvision.ops.batched_nms``), or over all classes when ``class_agnostic``;
5. the ``max_detections`` best survivors by score, in descending score order.

The ONNX-NMS graph and the numpy reference of the plugin (runtime/nms_reference.py) implement the
same steps, so parity can be tested on CPU. Thresholds come from the checkpoint / sidecar.
"""
from __future__ import annotations

import torch
from torchvision.ops import batched_nms, nms

from .models.box_coder import BoxCoder


def select_detections(boxes: torch.Tensor, scores: torch.Tensor, *, score_threshold: float, iou_threshold: float,
                      max_detections: int, pre_nms_top_k: int = 4096, class_agnostic: bool = False) -> list[dict]:
    """boxes [B, N, 4] normalised xyxy; scores [B, N, C+1] probabilities (column 0 = background).

    Returns per image {"boxes": float32 [K,4] normalised xyxy, "scores": float32 [K], "labels": int64 [K] in 1..C},
    sorted by descending score, K <= max_detections.
    """
    out = []
    num_cls = scores.shape[-1] - 1
    for b in range(boxes.shape[0]):
        s = scores[b, :, 1:]                                        # [N, C]
        flat = s.flatten()
        idx = torch.nonzero(flat >= score_threshold).squeeze(1)
        vals = flat[idx]
        if idx.numel() > pre_nms_top_k:
            vals, order = vals.topk(pre_nms_top_k, sorted=True)
            idx = idx[order]
        anchor_idx, cls = idx // num_cls, idx % num_cls
        bx = boxes[b, anchor_idx]
        keep = nms(bx.float(), vals.float(), iou_threshold) if class_agnostic else \
            batched_nms(bx.float(), vals.float(), cls, iou_threshold)
        keep = keep[:max_detections]
        out.append({"boxes": bx[keep].float(), "scores": vals[keep].float(), "labels": cls[keep] + 1})
    return out


def decode_outputs(loc: torch.Tensor, conf: torch.Tensor, anchors: torch.Tensor, box_coder: BoxCoder):
    """Raw heads -> (boxes [B,N,4] normalised xyxy, scores [B,N,C+1] softmax): the raw graph's outputs.
    RefineDet's packed ARM + ODM heads (its box coder is a ``TwoStepBoxCoder``) take the two-step decode:
    boxes against the refined anchors, zero object scores where negative anchor filtering drops the anchor."""
    return box_coder.decode_heads(loc, conf, anchors)


def postprocess(loc: torch.Tensor, conf: torch.Tensor, anchors: torch.Tensor, box_coder: BoxCoder, nms_cfg) -> list[dict]:
    """Raw heads -> detections; ``nms_cfg`` has the fields of runtime.metadata.NMSConfig."""
    boxes, scores = decode_outputs(loc, conf, anchors, box_coder)
    return select_detections(boxes, scores, score_threshold=nms_cfg.score_threshold, iou_threshold=nms_cfg.iou_threshold,
                             max_detections=nms_cfg.max_detections, pre_nms_top_k=nms_cfg.pre_nms_top_k,
                             class_agnostic=nms_cfg.class_agnostic)
