"""``fdet``: one console command for the whole product; each sub-command is a package command.

::

    fdet train ...       python -m distill.train        train a teacher / distill a student (no flags: the demo)
    fdet predict ...     python -m runtime.predict      boxes drawn on your pictures or video
    fdet --help          the sub-commands;   fdet SUBCOMMAND --help   that command's own help

A sub-command's module is imported only when it runs, so ``fdet predict`` on an ONNX graph needs
neither torch nor the training code. The ``python -m`` forms keep working.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from runtime.cli import command
from runtime.errors import did_you_mean

__all__ = ["COMMANDS", "main"]


@dataclass(frozen=True)
class Command:
    """One sub-command: the module whose ``main(argv)`` runs it, what it does in a few words, and
    the equivalent ``python`` command line."""

    module: str
    summary: str
    python_form: str


COMMANDS: dict[str, Command] = {
    "train": Command("distill.train", "train a detector or distill a student (no flags: the demo)",
                     "python -m distill.train"),
    "ablate": Command("distill.ablate", "every distillation method x N seeds on one schedule",
                      "python -m distill.ablate"),
    "export": Command("export.onnx", "checkpoint -> ONNX graphs (raw, TensorRT-plugin, ONNX-NMS, INT8) + sidecars",
                      "python -m export.onnx"),
    "trt": Command("export.trt.cli", "ONNX -> TensorRT engine with an explicit precision (needs an NVIDIA GPU)",
                   "python -m export.trt"),
    "predict": Command("runtime.predict", "run a model on pictures / a video: boxes drawn, COCO JSON, summary",
                       "python -m runtime.predict"),
    "evaluate": Command("runtime.evaluate", "COCO mAP of any model file on a dataset", "python -m runtime.evaluate"),
    "parity": Command("runtime.parity", "are the exported graphs / engines as accurate as the checkpoint?",
                      "python -m runtime.parity"),
    "bench": Command("benchmarks.run", "speed, mAP and parity of every backend this machine has",
                     "python benchmarks/run.py"),
}


def _version() -> str:
    try:
        return importlib.metadata.version("fdet")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


def usage() -> str:
    """The text of ``fdet --help``."""
    width = max(len(n) for n in COMMANDS)
    lines = ["usage: fdet SUBCOMMAND [ARGS ...]", "",
             "Distill, export and prove fast SSD-Lite detectors. Sub-commands:", ""]
    lines += [f"  {name:<{width}}  {c.summary}  [{c.python_form}]" for name, c in COMMANDS.items()]
    lines += ["", "fdet SUBCOMMAND --help   that sub-command's options",
              "fdet --version           the installed version", "",
              "example:  fdet predict --model exports/demo/student/model_nms.onnx --source photos/ --out preds/"]
    return "\n".join(lines)


@command("fdet", interrupt=False)  # each sub-command handles Ctrl-C itself
def main(argv: Sequence[str] | None = None) -> int:
    """Run ``fdet ARGS``; the exit status of the sub-command (2 for an unknown one)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if args else 2
    if args[0] in ("-V", "--version"):
        print(f"fdet {_version()}")
        return 0
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"error: unknown sub-command {name!r}.{did_you_mean(name, COMMANDS)} "
              f"Sub-commands: {', '.join(COMMANDS)} (fdet --help)", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name].module)
    code = module.main(rest)
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
