"""Run a model on your own pictures or video and look at the boxes.

::

    python -m runtime.predict --model exports/kd/model_nms.onnx --source photos/ --out preds/
    python -m runtime.predict --model runs/kd/best.pt --source clip.mp4 --out preds/ --conf 0.3
    python -m runtime.predict --model M --source 'photos/**/*.jpg' --out preds/      # a glob
    python -m runtime.predict --model M --source list.txt --out preds/                # one path a line

Writes to ``--out`` (a folder): each picture with its boxes, class names and scores drawn (same
name, ``.jpg`` for JPEG inputs and ``.png`` for the others; a video gives an annotated video),
``predictions.json`` (COCO results of the whole run: ``image_id``, the dataset's own
``category_id``, ``bbox`` xywh in original pixels, ``score``) and ``summary.json`` (images with
their ids, sizes and detection counts, categories, speed, backend). Prints one summary line.

Any model file ``load_detector`` opens: a checkpoint (needs torch), an ONNX graph (ONNX Runtime;
no torch), a TensorRT engine. A video needs PyAV (``pip install "fdet[video]"``).
Exit status: 0 done, 2 unusable arguments (or no readable image).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from runtime.atomic import write_json_atomic
from runtime.cli import command, fail, out_folder, ProductParser
from runtime.integrity import add_accept_modified
from runtime.errors import BackendUnavailable
from runtime.preprocess import load_image
from runtime.results import Results
from runtime.sources import Source, expand_source

__all__ = ["PredictRun", "predict", "main"]

DEFAULT_CONF = 0.25
PREDICTIONS = "predictions.json"
SUMMARY = "summary.json"


@dataclass
class PredictRun:
    """What one run did: COCO results, one row per image (or frame), skipped files and timing."""

    coco: list[dict[str, Any]] = field(default_factory=list)
    images: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    pictures: list[str] = field(default_factory=list)
    infer_seconds: float = 0.0

    def add(self, r: Results, file_name: str, out_name: str | None = None) -> None:
        """Record one image's Results under the next image id (1, 2, ...)."""
        image_id = len(self.images) + 1
        self.coco.extend(r.to_coco(image_id))
        h, w = r.orig_shape
        self.images.append({"id": image_id, "file_name": file_name, "height": h, "width": w,
                            "detections": len(r), "output": out_name})

    @property
    def detections(self) -> int:
        return len(self.coco)


def _output_names(files: Sequence[Path]) -> list[str]:
    """One picture name per input: same stem, .jpg for JPEG inputs, .png otherwise; never twice."""
    taken: set[str] = set()
    names = []
    for f in files:
        suffix = ".jpg" if f.suffix.lower() in (".jpg", ".jpeg") else ".png"
        name, n = f.stem + suffix, 1
        while name.lower() in taken:
            n += 1
            name = f"{f.stem}_{n}{suffix}"
        taken.add(name.lower())
        names.append(name)
    return names


def _progress(total: int | None, desc: str, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="img", dynamic_ncols=True, leave=False, file=sys.stderr,
                disable=not enabled)


def _timed(det: Any, images: list[np.ndarray], conf: float | None, run: PredictRun) -> list[Results]:
    t0 = time.perf_counter()
    results = det(images, conf=conf)
    run.infer_seconds += time.perf_counter() - t0
    return results


def _read_batch(files: Sequence[Path], run: PredictRun) -> tuple[list[Path], list[np.ndarray]]:
    """The readable files of a batch and their pixels; unreadable ones go to ``run.skipped``."""
    ok, pixels = [], []
    for f in files:
        try:
            pixels.append(load_image(f))
            ok.append(f)
        except ValueError as e:
            run.skipped.append({"file": str(f), "reason": str(e)})
    return ok, pixels


def predict_images(det: Any, files: Sequence[Path], out: Path | None, *, conf: float | None = DEFAULT_CONF,
                   batch_size: int = 8, progress: bool = True, plot_kwargs: dict[str, Any] | None = None
                   ) -> PredictRun:
    """Detect on every file (in batches), draw each picture into ``out`` (None: draw nothing)."""
    run = PredictRun()
    names = dict(zip(files, _output_names(files)))
    with _progress(len(files), getattr(det, "name", "predict"), progress) as bar:
        for s in range(0, len(files), batch_size):
            ok, pixels = _read_batch(files[s:s + batch_size], run)
            results = _timed(det, pixels, conf, run) if pixels else []
            for f, r in zip(ok, results):
                r.path = str(f)
                if out is not None:
                    run.pictures.append(str(r.save(out / names[f], **(plot_kwargs or {}))))
                run.add(r, str(f), names[f] if out is not None else None)
            bar.update(len(files[s:s + batch_size]))
    return run


def _batches(frames: Iterable[np.ndarray], size: int) -> Iterable[list[np.ndarray]]:
    batch: list[np.ndarray] = []
    for frame in frames:
        batch.append(frame)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def predict_video(det: Any, path: Path, out: Path, *, conf: float | None = DEFAULT_CONF, batch_size: int = 8,
                  progress: bool = True, plot_kwargs: dict[str, Any] | None = None) -> PredictRun:
    """Detect on every frame of a video and write the annotated video ``out/<stem>.mp4``; each
    frame is one image of the COCO results (ids 1, 2, ... in frame order)."""
    from runtime.video import VideoWriter, probe, read_frames

    info = probe(path)
    run = PredictRun()
    target = out / f"{path.stem}.mp4"
    with VideoWriter(target, fps=info.fps) as writer, _progress(info.frames or None, path.name, progress) as bar:
        for frames in _batches(read_frames(path), batch_size):
            for frame, r in zip(frames, _timed(det, frames, conf, run)):
                writer.write(r.plot(frame, **(plot_kwargs or {})))
                run.add(r, f"{path.name}#{len(run.images)}", target.name)
            bar.update(len(frames))
    run.pictures.append(str(target))
    return run


def predict(det: Any, source: str | Source, out: str | Path, *, conf: float | None = DEFAULT_CONF,
            batch_size: int = 8, progress: bool = True, save: bool = True,
            plot_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run ``det`` (a :class:`~runtime.detector.Detector`) on ``source`` (what ``--source`` takes) and
    write the pictures, ``predictions.json`` and ``summary.json`` into the folder ``out``.

    Returns the summary (what ``summary.json`` holds). ValueError when nothing could be read.
    """
    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    if conf is not None and not 0.0 <= conf <= 1.0:
        raise ValueError(f"--conf must be in [0, 1], got {conf}")
    src = source if isinstance(source, Source) else expand_source(source)
    folder = out_folder(out)
    t0 = time.perf_counter()
    if src.video is not None:
        run = predict_video(det, src.video, folder, conf=conf, batch_size=batch_size, progress=progress,
                            plot_kwargs=plot_kwargs)
    else:
        run = predict_images(det, src.images, folder if save else None, conf=conf, batch_size=batch_size,
                             progress=progress, plot_kwargs=plot_kwargs)
    if not run.images:
        raise ValueError(f"no readable image in --source {src.text}: " + "; ".join(s["reason"] for s in run.skipped[:3]))
    write_json_atomic(folder / PREDICTIONS, run.coco)
    summary = _summary(det, src, folder, run, conf, time.perf_counter() - t0)
    write_json_atomic(folder / SUMMARY, summary)
    return summary


def _summary(det: Any, src: Source, folder: Path, run: PredictRun, conf: float | None, seconds: float
             ) -> dict[str, Any]:
    meta = det.meta
    n = len(run.images)
    return {
        "model": str(getattr(det, "path", "") or ""), "backend": getattr(det, "name", type(det).__name__),
        "source": src.text,
        "source_kind": src.kind, "out": str(folder), "conf": conf,
        "images": n, "detections": run.detections, "skipped": run.skipped,
        "ms_per_image": 1000.0 * run.infer_seconds / n, "seconds": seconds,
        "timing": "ms_per_image: preprocess + model + NMS; seconds: the whole run (reading and drawing too)",
        "predictions": str(folder / PREDICTIONS), "pictures": run.pictures,
        "categories": [{"id": c, "name": name} for c, name in zip(meta.category_ids, meta.class_names)],
        "files": run.images,
    }


def summary_line(s: dict[str, Any]) -> str:
    """One line: images, detections, speed, backend, where the files are."""
    what = "frames" if s["source_kind"] == "video" else "images"
    skipped = f", {len(s['skipped'])} unreadable skipped" if s["skipped"] else ""
    kind = "video" if what == "frames" else "pictures"
    pictures = f"{len(s['pictures'])} annotated {kind}, " if s["pictures"] else ""
    return (f"predict: {s['images']} {what}{skipped}, {s['detections']} detections (conf >= {s['conf']}), "
            f"{s['ms_per_image']:.1f} ms per image ({s['backend']}) -> {s['out']}/ "
            f"({pictures}{PREDICTIONS}, {SUMMARY})")


def build_parser() -> argparse.ArgumentParser:
    p = ProductParser(prog="python -m runtime.predict", description=__doc__.split("\n\n")[0],
                                epilog="examples:\n" + "\n\n".join(__doc__.split("\n\n")[2:5]),
                                formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    p.add_argument("--model", required=True, help="checkpoint (.pt / run folder), .onnx graph or .engine")
    p.add_argument("--source", required=True,
                   help="an image, a folder of images, a glob ('photos/**/*.jpg'), a list file (.txt) or a video")
    p.add_argument("--out", required=True, help="output folder (created): pictures, predictions.json, summary.json")
    p.add_argument("--conf", type=float, default=DEFAULT_CONF,
                   help=f"draw and record detections with score >= CONF (default: {DEFAULT_CONF})")
    p.add_argument("--batch-size", type=int, default=8, help="images per model call (default: 8)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (checkpoints; ONNX Runtime's CUDA provider)")
    p.add_argument("--provider", default=None, choices=["cpu", "cuda", "tensorrt", "reference", "openvino"],
                   help="ONNX Runtime execution provider; 'reference' runs the TensorRT plugin graph on CPU; "
                        "'openvino' runs the .onnx on OpenVINO")
    add_accept_modified(p)
    p.add_argument("--line-width", type=int, default=None,
                   help="box outline in pixels (default: grows with the picture)")
    p.add_argument("--no-labels", action="store_true", help="draw boxes only, no class names or scores")
    p.add_argument("--no-save", action="store_true", help="write predictions.json and summary.json only, no pictures")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


@command("python -m runtime.predict")
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from runtime.load import load_detector

    try:
        source = expand_source(args.source)
        det = load_detector(args.model, device=args.device, provider=args.provider,
                            accept_modified=args.accept_modified)
    except (ValueError, RuntimeError) as e:
        return fail(e)
    try:
        summary = predict(det, source, args.out, conf=args.conf, batch_size=args.batch_size,
                          progress=not args.no_progress, save=not args.no_save,
                          plot_kwargs={"line_width": args.line_width, "labels": not args.no_labels})
    except (ValueError, BackendUnavailable, OSError) as e:
        return fail(e)
    finally:
        det.close()
    for s in summary["skipped"]:
        print(f"skipped {s['file']}: {s['reason']}", file=sys.stderr)
    print(summary_line(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
