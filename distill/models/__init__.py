"""Detectors: the SSD family, its anchors, box coder and matcher, and the model registry."""
from __future__ import annotations

from .anchors import DefaultBoxGenerator
from .box_coder import BoxCoder
from .matcher import Matcher
from .registry import (ROLES, check_model_kwargs, count_gflops, count_parameters, create_model,
                       find_offline_backbone_weights, list_models, load_pretrained_backbone)
from .ssd import SSD

__all__ = ["DefaultBoxGenerator", "BoxCoder", "Matcher", "SSD", "ROLES", "check_model_kwargs", "create_model",
           "list_models", "load_pretrained_backbone", "find_offline_backbone_weights", "count_parameters", "count_gflops"]
