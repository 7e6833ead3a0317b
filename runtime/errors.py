"""Errors shared by every layer: a missing backend, and unknown names with a did-you-mean.

Imports only the standard library.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any

__all__ = ["BackendUnavailable", "check_choice", "did_you_mean", "unknown_name_error"]


class BackendUnavailable(RuntimeError):
    """A backend or tool this host lacks: TensorRT, a CUDA device, ONNX Runtime or one of its
    execution providers, OpenVINO...

    Not a bug and not bad input: callers that try every backend (the benchmark) catch this one
    type, skip the backend and report the one-line message as the reason.
    """


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """``" Did you mean 'x'?"`` for the closest of ``choices`` to ``name``, or ``""`` if none is close."""
    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1)
    return f" Did you mean '{close[0]}'?" if close else ""


def unknown_name_error(kind: str, name: str, choices: Iterable[str]) -> ValueError:
    """``ValueError("unknown <kind> '<name>'. Did you mean 'x'? Available: a, b, c")``, to raise.

    ``choices`` are listed in the order given.
    """
    choices = [str(c) for c in choices]
    return ValueError(f"unknown {kind} '{name}'.{did_you_mean(name, choices)} Available: {', '.join(choices)}")


def check_choice(what: str, value: Any, choices: Iterable[Any]) -> None:
    """ValueError ``"<what> must be one of [...], got 'v'. Did you mean 'x'?"`` unless ``value`` is a choice."""
    choices = list(choices)
    if value not in choices:
        raise ValueError(f"{what} must be one of {choices}, got {value!r}.{did_you_mean(str(value), map(str, choices))}")


def import_optional(module: str, backend: str, install: str) -> Any:
    """``importlib.import_module(module)``, or a one-line :class:`BackendUnavailable` naming the backend and
    how to install it (``install``: the pip command)."""
    import importlib
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise BackendUnavailable(f"{backend} backend unavailable: cannot import {module} ({e}); {install}") from None
