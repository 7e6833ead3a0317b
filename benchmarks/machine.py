"""Facts about the machine a benchmark ran on: CPU, GPU, driver, CUDA, TensorRT, ORT, OpenVINO, Jetson.

Read without importing torch or tensorrt where possible (``importlib.metadata``, ``/proc``,
``nvidia-smi``); torch is asked for the CUDA device only when it is already imported.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from runtime.backends import cpu_cores
from runtime.metadata import library_versions

TEGRA_RELEASE = Path("/etc/nv_tegra_release")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _nvidia_smi() -> dict[str, str] | None:
    exe = shutil.which("nvidia-smi")
    if not exe:
        return None
    try:
        out = subprocess.run([exe, "--query-gpu=name,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0 or not out.stdout.strip():
        return None
    name, _, driver = out.stdout.strip().splitlines()[0].partition(",")
    info = {"gpu": name.strip(), "driver": driver.strip()}
    try:
        full = subprocess.run([exe], capture_output=True, text=True, timeout=10).stdout
        if "CUDA Version:" in full:
            info["cuda_driver_api"] = full.split("CUDA Version:", 1)[1].split()[0]
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def _dist_version(name: str) -> str | None:
    """An installed distribution's version (read from its metadata, never imported), or None."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_facts() -> dict[str, Any]:
    """CPU model and cores, GPU name, driver, CUDA, TensorRT / ORT / torch versions, Jetson or not."""
    versions = library_versions()
    facts: dict[str, Any] = {
        "hostname": platform.node(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "cpu_cores_usable": cpu_cores(),
        "gpu": None, "driver": None, "cuda": None,
        "tensorrt": versions.get("tensorrt"),
        "onnxruntime": versions.get("onnxruntime"),
        "torch": versions.get("torch"),
        "torchvision": versions.get("torchvision"),
        "numpy": versions.get("numpy"),
        "jetson": TEGRA_RELEASE.is_file(),
        "openvino": _dist_version("openvino"),
    }
    if facts["jetson"]:
        try:
            facts["jetson_release"] = TEGRA_RELEASE.read_text().splitlines()[0].strip("# ").strip()
        except (OSError, IndexError):
            pass
    smi = _nvidia_smi()
    if smi:
        facts.update({"gpu": smi.get("gpu"), "driver": smi.get("driver"), "cuda": smi.get("cuda_driver_api")})
    torch = sys.modules.get("torch")
    if torch is not None:
        facts["torch_cuda"] = torch.version.cuda
        if torch.cuda.is_available():
            facts["gpu"] = facts["gpu"] or torch.cuda.get_device_name(0)
            facts["cuda"] = facts["cuda"] or torch.version.cuda
    try:
        import onnxruntime as ort

        facts["onnxruntime_providers"] = ort.get_available_providers()
    except ImportError:
        pass
    return facts
