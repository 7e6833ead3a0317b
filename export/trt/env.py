"""What TensorRT / CUDA this machine has, asked without ever crashing: used by export.onnx (to
choose the EfficientNMS_TRT plugin version) and by export.trt (to refuse loudly when it cannot build).

Nothing here imports tensorrt or a CUDA binding at module import.

EfficientNMS_TRT versions (TensorRT repository, ``plugin/README.md`` and
``plugin/efficientNMSPlugin``): version "1" is the only version ever published. It is an
IPluginV2DynamicExt plugin, and as all IPluginV2 plugins it is marked deprecated in recent
TensorRT 10 releases (the README lists it "[DEPRECATED]"), but unlike e.g. CropAndResizeDynamic or
DisentangledAttention_TRT no IPluginV3 successor version has been published (checked up to the
TensorRT 10.14/10.16 plugin tables). So ``--plugin-version auto`` means: "1" when TensorRT is absent
or older than 10.12; with TensorRT >= 10.12, the highest EfficientNMS_TRT version its plugin
registry offers (today "1" again), so a future non-deprecated version is picked up without a code
change. The choice and the reason are recorded in the sidecar (``nms_plugin``).
"""
from __future__ import annotations

import importlib
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime.trt_reference import PLUGIN_NAME

AUTO_SWITCH_VERSION = (10, 12)


def is_jetson() -> bool:
    """NVIDIA Jetson (L4T) host: TensorRT comes from JetPack there, not from pip."""
    return platform.machine() == "aarch64" and (Path("/etc/nv_tegra_release").exists()
                                                or Path("/sys/module/tegra_fuse").exists())


def install_hint() -> str:
    if is_jetson():
        return ("on Jetson use the TensorRT that ships with JetPack (sudo apt install nvidia-jetpack "
                "python3-libnvinfer) and pip install pycuda (or cuda-python)")
    return "pip install tensorrt (or tensorrt-cu12 / tensorrt-cu13 to match your CUDA) with an NVIDIA driver installed"


def import_tensorrt() -> tuple[Any | None, str | None]:
    """(tensorrt module, None) or (None, one-line reason)."""
    try:
        trt = importlib.import_module("tensorrt")
    except ImportError as e:
        return None, f"TensorRT is not installed ({e.__class__.__name__}: {e})"
    except Exception as e:  # noqa: BLE001 - a broken install (missing libnvinfer.so) raises OSError etc.
        return None, f"TensorRT cannot be imported ({e.__class__.__name__}: {e})"
    if not hasattr(trt, "Builder"):
        return None, f"the installed 'tensorrt' module ({getattr(trt, '__file__', '?')}) has no Builder"
    return trt, None


def parse_version(v: str | None) -> tuple[int, ...] | None:
    if not v:
        return None
    out = []
    for part in str(v).split("."):
        digits = "".join(ch for ch in part if ch.isdigit())
        if not digits:
            break
        out.append(int(digits))
    return tuple(out) or None


def registered_plugin_versions(trt: Any, name: str = PLUGIN_NAME) -> list[str] | None:
    """Versions of plugin ``name`` in TensorRT's plugin registry (after init_libnvinfer_plugins),
    or None if the registry cannot be read."""
    try:
        logger = trt.Logger(trt.Logger.ERROR)
        trt.init_libnvinfer_plugins(logger, "")
        reg = trt.get_plugin_registry()
        creators = getattr(reg, "all_creators", None)
        if creators is None:
            creators = getattr(reg, "plugin_creator_list", [])
        versions = {str(c.plugin_version) for c in creators if getattr(c, "name", None) == name}
        return sorted(versions, key=lambda v: parse_version(v) or (0,))
    except Exception:  # noqa: BLE001 - no driver, no GPU: the registry is optional information
        return None


@dataclass
class PluginChoice:
    version: str
    requested: str
    reason: str

    def sidecar(self, domain: str) -> dict:
        return {"name": PLUGIN_NAME, "version": self.version, "namespace": "", "domain": domain,
                "requested": self.requested, "reason": self.reason}


def choose_plugin_version(requested: str = "auto", trt_version: str | None = None,
                          registry_versions: list[str] | None = None) -> PluginChoice:
    """The EfficientNMS_TRT ``plugin_version`` to write (see the module docstring).

    ``trt_version``/``registry_versions``: what the installed TensorRT says (None: not installed /
    unknown). An explicit version that the installed registry lacks is a ValueError.
    """
    requested = str(requested).strip()
    if requested != "auto" and not requested.isdigit():
        raise ValueError(f"--plugin-version must be 'auto' or a version number like '1', got {requested!r}")
    if requested != "auto":
        if registry_versions is not None and requested not in registry_versions:
            raise ValueError(f"TensorRT {trt_version} registers {PLUGIN_NAME} versions {registry_versions}, "
                             f"not {requested!r}")
        note = "" if registry_versions is not None else " (not checked: TensorRT is not installed here)"
        return PluginChoice(requested, requested, f"requested explicitly{note}")
    tv = parse_version(trt_version)
    if tv is None:
        return PluginChoice("1", "auto", "TensorRT not installed here: version 1 (IPluginV2DynamicExt), "
                                         "understood by every TensorRT >= 8.0")
    if tv < AUTO_SWITCH_VERSION:
        return PluginChoice("1", "auto", f"TensorRT {trt_version} < 10.12: version 1")
    if registry_versions:
        best = registry_versions[-1]
        why = ("the only registered version; TensorRT publishes no IPluginV3 successor of "
               f"{PLUGIN_NAME}" if best == "1" else f"highest of the registered versions {registry_versions}")
        return PluginChoice(best, "auto", f"TensorRT {trt_version}: version {best}, {why}")
    return PluginChoice("1", "auto", f"TensorRT {trt_version}: plugin registry unreadable here, version 1")


def detect_plugin_choice(requested: str = "auto") -> PluginChoice:
    """:func:`choose_plugin_version` with whatever TensorRT is importable on this machine."""
    trt, _ = import_tensorrt()
    if trt is None:
        return choose_plugin_version(requested)
    version = getattr(trt, "__version__", None)
    reg = registered_plugin_versions(trt) if requested != "auto" or \
        (parse_version(version) or (0,)) >= AUTO_SWITCH_VERSION else None
    return choose_plugin_version(requested, version, reg)


# --------------------------------------------------------------------------- CUDA memory + device
class CudaBackend:
    """The little CUDA the builder needs (device info, a device buffer for calibration), through
    cuda-python (``cuda.bindings.runtime`` or the older ``cuda.cudart``) or pycuda (Jetson)."""

    def __init__(self, kind: str, mod: Any):
        self.kind, self.mod = kind, mod

    def _check(self, result):
        err, *rest = result if isinstance(result, tuple) else (result,)
        code = int(getattr(err, "value", err))
        if code != 0:
            raise RuntimeError(f"CUDA error {err}")
        return rest[0] if len(rest) == 1 else rest

    def device_count(self) -> int:
        if self.kind == "pycuda":
            self.mod.init()
            return self.mod.Device.count()
        return int(self._check(self.mod.cudaGetDeviceCount()))

    def device_info(self) -> tuple[str, tuple[int, int]]:
        """(GPU name, (major, minor) compute capability) of device 0."""
        if self.kind == "pycuda":
            self.mod.init()
            dev = self.mod.Device(0)
            return dev.name(), tuple(dev.compute_capability())
        prop = self._check(self.mod.cudaGetDeviceProperties(0))
        name = prop.name
        name = name.split(b"\0", 1)[0].decode() if isinstance(name, (bytes, bytearray)) else str(name)
        return name, (int(prop.major), int(prop.minor))

    def malloc(self, nbytes: int):
        if self.kind == "pycuda":
            return self.mod.mem_alloc(int(nbytes))
        return self._check(self.mod.cudaMalloc(int(nbytes)))

    def htod(self, dst, array) -> None:
        import numpy as np
        a = np.ascontiguousarray(array)
        if self.kind == "pycuda":
            self.mod.memcpy_htod(dst, a)
            return
        self._check(self.mod.cudaMemcpy(dst, a.ctypes.data, a.nbytes,
                                        self.mod.cudaMemcpyKind.cudaMemcpyHostToDevice))

    def free(self, ptr) -> None:
        if self.kind == "pycuda":
            ptr.free()
        else:
            self._check(self.mod.cudaFree(ptr))

    @staticmethod
    def pointer(ptr) -> int:
        return int(ptr)


def import_cuda() -> tuple[CudaBackend | None, str | None]:
    """(backend, None) or (None, reason). Tries cuda-python, then pycuda (with its context)."""
    errors = []
    for modname in ("cuda.bindings.runtime", "cuda.cudart"):
        try:
            return CudaBackend("cuda-python", importlib.import_module(modname)), None
        except Exception as e:  # noqa: BLE001
            errors.append(f"{modname}: {e}")
    try:
        drv = importlib.import_module("pycuda.driver")
        importlib.import_module("pycuda.autoinit")  # creates the context the calibrator copies into
        return CudaBackend("pycuda", drv), None
    except Exception as e:  # noqa: BLE001
        errors.append(f"pycuda: {e}")
    return None, "no CUDA Python binding (pip install cuda-python, or pycuda on Jetson): " + "; ".join(errors)


def fast_precisions(compute_capability: tuple[int, int] | None) -> tuple[bool, bool]:
    """(fast FP16, fast INT8) from the compute capability (TensorRT >= 10.5 asks callers to query
    CUDA instead of IBuilder.platformHasFast*): FP16 at full rate on SM 5.3, 6.0, 6.2 and >= 7.0
    (not on 6.1, the GeForce 10 series); INT8 (dp4a, later tensor cores) on every SM >= 6.1."""
    if compute_capability is None:
        return False, False
    cc = tuple(compute_capability)
    fp16 = cc in ((5, 3), (6, 0), (6, 2)) or cc >= (7, 0)
    int8 = cc >= (6, 1)
    return fp16, int8
