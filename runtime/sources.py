"""What ``--source`` names: one image, a folder, a glob, a list file, or a video.

::

    expand_source("photos/")            # every image in the folder (not its sub-folders), sorted
    expand_source("photos/**/*.jpg")    # a glob (``**`` reaches into sub-folders)
    expand_source("a.jpg")              # one image
    expand_source("list.txt")           # one image path a line ('#' comments; relative to the list's folder)
    expand_source("clip.mp4")           # a video (frames read by :mod:`runtime.video`)

Imports only the standard library.
"""

from __future__ import annotations

import glob
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["IMAGE_SUFFIXES", "Source", "VIDEO_SUFFIXES", "expand_source"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")
LIST_SUFFIXES = (".txt",)
_KINDS = (f"an image ({', '.join(IMAGE_SUFFIXES)}), a folder of images, a glob such as 'photos/*.jpg', "
          f"a list file (.txt, one image path a line) or a video ({', '.join(VIDEO_SUFFIXES)})")


@dataclass
class Source:
    """The expanded ``--source``: ``images`` (files, in order) or one ``video``; ``kind`` is one of
    image / folder / glob / list / video; ``text`` what was given."""

    kind: str
    images: list[Path] = field(default_factory=list)
    video: Path | None = None
    text: str = ""


def _is_image(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()


def _from_list(path: Path) -> list[Path]:
    files = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise ValueError(f"list file {path}: not UTF-8 text (byte {e.start}); expected one image path a line") from None
    for n, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        p = Path(line).expanduser()
        p = p if p.is_absolute() else path.parent / p
        if not p.is_file():
            raise ValueError(f"{path}:{n}: image file not found: {p}")
        if p.suffix.lower() not in IMAGE_SUFFIXES:
            raise ValueError(f"{path}:{n}: {p.name} is not an image ({', '.join(IMAGE_SUFFIXES)})")
        files.append(p)
    if not files:
        raise ValueError(f"list file {path} names no image (one path a line, '#' starts a comment)")
    return files


def expand_source(source: str) -> Source:
    """``--source`` -> :class:`Source`; ValueError naming the source and the accepted kinds."""
    src = _expand(str(source).strip())
    src.text = str(source)
    return src


def _expand(text: str) -> Source:
    if not text:
        raise ValueError(f"--source is empty; expected {_KINDS}")
    p = Path(text).expanduser()
    if any(ch in text for ch in "*?["):
        files = [Path(f) for f in sorted(glob.glob(str(p), recursive=True))]
        images = [f for f in files if _is_image(f)]
        if not images:
            raise ValueError(f"--source {text}: the glob matches no image ({len(files)} other files); images are "
                             f"{', '.join(IMAGE_SUFFIXES)}")
        return Source("glob", images)
    if p.is_dir():
        images = sorted(f for f in p.iterdir() if _is_image(f))
        if not images:
            raise ValueError(f"--source {p}: the folder has no image ({', '.join(IMAGE_SUFFIXES)}); "
                             f"use a glob such as '{p}/**/*.jpg' for sub-folders")
        return Source("folder", images)
    if not p.is_file():
        raise ValueError(f"--source {p} does not exist; expected {_KINDS}")
    suffix = p.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return Source("image", [p])
    if suffix in VIDEO_SUFFIXES:
        return Source("video", video=p)
    if suffix in LIST_SUFFIXES:
        return Source("list", _from_list(p))
    raise ValueError(f"--source {p}: cannot tell what {suffix or 'a file without suffix'} is; expected {_KINDS}")
