"""fdet: distill small SSD-Lite detectors, export them to ONNX / TensorRT, prove parity and speed.

The one console command, ``fdet SUBCOMMAND ...``, lives in :mod:`fdet.cli`; each sub-command is
one of the package commands (``python -m distill.train``, ``python -m runtime.predict``, ...).
"""
