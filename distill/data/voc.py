"""Pascal-VOC loader: ``ROOT/{Annotations, JPEGImages, ImageSets/Main/SPLIT.txt}`` -> records.

The parser is numpy-only and lives in :mod:`runtime.voc` (deployment-side evaluation reads VOC
too); the rules (class list, coordinates, difficult objects, image ids) are documented there.
"""

from __future__ import annotations

from runtime.voc import VOC_CLASSES, load_voc, split_file

__all__ = ["VOC_CLASSES", "load_voc", "split_file"]
