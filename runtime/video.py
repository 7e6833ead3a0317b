"""Video in, annotated video out, through PyAV (``pip install "fdet[video]"``, or ``pip install av``).

::

    info = probe(path)                                # frames (0 when unknown), fps, (h, w)
    for frame in read_frames(path):                   # uint8 [H, W, 3] RGB, in order
        ...
    with VideoWriter("out.mp4", fps=25.0) as w:
        w.write(frame)                                # uint8 [H, W, 3] RGB; H.264 (MPEG-4 Part 2 if absent)

PyAV is an optional extra: without it :func:`import_av` raises one line saying how to install it
(a :class:`~runtime.errors.BackendUnavailable`, like any other tool this host lacks).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from runtime.errors import BackendUnavailable

__all__ = ["VideoInfo", "VideoWriter", "import_av", "probe", "read_frames"]

INSTALL_HINT = 'pip install "fdet[video]" (or pip install av)'


def import_av() -> Any:
    """The ``av`` module (PyAV), or a one-line BackendUnavailable saying how to install it."""
    try:
        import av
    except ImportError as e:
        raise BackendUnavailable(f"video needs PyAV, which is not installed here ({e}): {INSTALL_HINT}") from None
    return av


@dataclass
class VideoInfo:
    """``frames``: count from the container (0 when it does not say); ``fps``; ``size_hw`` (h, w)."""

    frames: int
    fps: float
    size_hw: tuple[int, int]


def _open(path: Path) -> Any:
    av = import_av()
    if not Path(path).is_file():
        raise ValueError(f"video file not found: {path}")
    try:
        container = av.open(str(path))
    except av.FFmpegError as e:
        raise ValueError(f"cannot read video {path}: {e}") from None
    if not container.streams.video:
        container.close()
        raise ValueError(f"{path} has no video stream")
    return container


def probe(path: str | os.PathLike[str]) -> VideoInfo:
    """Frame count, frame rate and size of a video file."""
    container = _open(Path(path))
    try:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate or 25.0)
        return VideoInfo(int(stream.frames or 0), fps, (int(stream.height), int(stream.width)))
    finally:
        container.close()


def read_frames(path: str | os.PathLike[str]) -> Iterator[np.ndarray]:
    """Every frame of the first video stream as uint8 [H, W, 3] RGB, in presentation order."""
    container = _open(Path(path))
    try:
        for frame in container.decode(video=0):
            yield frame.to_ndarray(format="rgb24")
    finally:
        container.close()


class VideoWriter:
    """Write RGB frames to a video file (H.264 in yuv420p where PyAV has it, else MPEG-4 Part 2).

    The size is taken from the first frame; odd widths / heights are padded by one pixel (yuv420p
    needs even sizes). Written to a temporary name and renamed on :meth:`close`, so a stopped run
    leaves no half-written video under the final name.
    """

    def __init__(self, path: str | os.PathLike[str], fps: float = 25.0) -> None:
        self.av = import_av()
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.with_name(f".{self.path.stem}.part{self.path.suffix}")
        self.fps = fps
        self.frames = 0
        self._container: Any = None
        self._stream: Any = None

    def _start(self, h: int, w: int) -> None:
        from fractions import Fraction

        codec = "libx264" if "libx264" in self.av.codecs_available else "mpeg4"
        self._container = self.av.open(str(self._tmp), mode="w")
        self._stream = self._container.add_stream(codec, rate=Fraction(self.fps).limit_denominator(1001))
        self._stream.width, self._stream.height = w + w % 2, h + h % 2
        self._stream.pix_fmt = "yuv420p"

    def write(self, frame: np.ndarray) -> None:
        """Append one uint8 [H, W, 3] RGB frame."""
        if not (isinstance(frame, np.ndarray) and frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] == 3):
            raise ValueError(f"frames must be uint8 [H, W, 3] RGB, got {getattr(frame, 'dtype', '')} "
                             f"{getattr(frame, 'shape', type(frame).__name__)}")
        h, w = frame.shape[:2]
        if self._stream is None:
            self._start(h, w)
        frame = np.pad(frame, ((0, self._stream.height - h), (0, self._stream.width - w), (0, 0)), mode="edge")
        for packet in self._stream.encode(self.av.VideoFrame.from_ndarray(np.ascontiguousarray(frame),
                                                                          format="rgb24")):
            self._container.mux(packet)
        self.frames += 1

    def close(self) -> Path | None:
        """Flush and move the video to its final name; the Path, or None when no frame was written."""
        if self._container is None:
            return None
        for packet in self._stream.encode():
            self._container.mux(packet)
        self._container.close()
        self._container = None
        os.replace(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        """Drop the partial file (after an error)."""
        if self._container is not None:
            try:
                self._container.close()
            except Exception:  # noqa: BLE001 - the file is removed anyway
                pass
            self._container = None
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type: Any, *rest: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
