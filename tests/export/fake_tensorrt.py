"""Stand-ins for the ``tensorrt`` module of two generations, shaped like their Python APIs (no GPU):

* TensorRT 10 (``major=10``): ``BuilderFlag.FP16`` / ``INT8``, ``IBuilderConfig.int8_calibrator``
  and ``set_calibration_profile``, ``IInt8EntropyCalibrator2``, ``Builder.platform_has_fast_*``,
  ``NetworkDefinitionCreationFlag.EXPLICIT_BATCH`` (ignored) and ``STRONGLY_TYPED``;
* TensorRT 11 (``major=11``): none of those (weak typing removed); ``STRONGLY_TYPED`` accepted.

The ONNX parser reads the real file: one fake layer per node, output types from ONNX shape
inference (float16 -> HALF), Q/DQ nodes as QUANTIZE / DEQUANTIZE layers, NonMaxSuppression as
TensorRT's NMS layer (INMSLayer), EfficientNMS_TRT as a PLUGIN_V2 layer -- and, like TensorRT,
the parse fails on a plugin node whose plugin the registry lacks (``plugins=()``: a TensorRT
without EfficientNMS_TRT). ``build_serialized_network``
runs an INT8 calibrator the way TensorRT does (batches until None, then the cache) and returns a
JSON "plan" saying what was parsed and set, which :class:`FakeDetector` reads back.
"""
from __future__ import annotations

import json
import types
from pathlib import Path

import numpy as np
import onnx

from runtime.trt_reference import PLUGIN_NAME

ONNX_TO_TRT = {onnx.TensorProto.FLOAT: "FLOAT", onnx.TensorProto.FLOAT16: "HALF", onnx.TensorProto.INT8: "INT8",
               onnx.TensorProto.INT32: "INT32", onnx.TensorProto.INT64: "INT64", onnx.TensorProto.BOOL: "BOOL"}
LAYER_TYPES = {"QuantizeLinear": "QUANTIZE", "DequantizeLinear": "DEQUANTIZE", "NonMaxSuppression": "NMS",
               PLUGIN_NAME: "PLUGIN_V2"}
NP = {"FLOAT": np.float32, "HALF": np.float16, "INT8": np.int8, "INT32": np.int32, "INT64": np.int64, "BOOL": np.bool_}


class Tensor:
    def __init__(self, name, dtype, shape=()):
        self.name, self.dtype, self.shape = name, dtype, tuple(shape)


class Layer:
    def __init__(self, node, typed):
        self.name = node.name
        self.type = LAYER_TYPES.get(node.op_type, node.op_type)
        self.outputs = [Tensor(o, typed.get(o, "FLOAT")) for o in node.output]
        self.num_outputs = len(self.outputs)

    def get_output(self, i):
        return self.outputs[i]


def _dims(v):
    return [d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim]


class Network:
    def __init__(self, flags):
        self.flags, self.layers, self.inputs, self.outputs, self.parsed = flags, [], [], [], None

    def populate(self, path):
        model = onnx.load(str(path))
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False).graph
        typed = {v.name: ONNX_TO_TRT.get(v.type.tensor_type.elem_type, "FLOAT")
                 for v in [*inferred.input, *inferred.value_info, *inferred.output]}
        self.layers = [Layer(n, typed) for n in model.graph.node]
        self.inputs = [Tensor(v.name, typed[v.name], _dims(v)) for v in model.graph.input]
        self.outputs = [Tensor(v.name, typed[v.name], _dims(v)) for v in model.graph.output]
        self.parsed = str(path)

    num_layers = property(lambda self: len(self.layers))
    num_inputs = property(lambda self: len(self.inputs))
    num_outputs = property(lambda self: len(self.outputs))

    def get_layer(self, i):
        return self.layers[i]

    def get_input(self, i):
        return self.inputs[i]

    def get_output(self, i):
        return self.outputs[i]


class Profile:
    def __init__(self):
        self.shapes = {}

    def set_shape(self, name, mn, op, mx):
        self.shapes[name] = (tuple(mn), tuple(op), tuple(mx))


class TimingCache:
    def __init__(self, blob):
        self.blob = bytes(blob)

    def serialize(self):
        return self.blob or b"timing"


def _config_class(major):
    class Config:
        """IBuilderConfig: TensorRT 11's has no int8_calibrator / set_calibration_profile (slots). ``flags``: the
        flags set; ``cleared``: those cleared; TF32 is on unless cleared (TensorRT's default, 10 and 11)."""

        __slots__ = ("flags", "cleared", "profiles", "cache", "pool") + (("int8_calibrator", "calibration_profile")
                                                                         if major < 11 else ())

        def __init__(self):
            self.flags, self.cleared, self.profiles, self.cache, self.pool = set(), set(), [], None, {}
            if major < 11:
                self.int8_calibrator, self.calibration_profile = None, None

        def set_memory_pool_limit(self, pool, size):
            self.pool[pool] = size

        def set_flag(self, flag):
            self.flags.add(flag)
            self.cleared.discard(flag)

        def clear_flag(self, flag):
            self.flags.discard(flag)
            self.cleared.add(flag)

        def get_flag(self, flag):
            return flag in self.flags or (flag == "TF32" and flag not in self.cleared)

        def add_optimization_profile(self, profile):
            self.profiles.append(profile)

        def create_timing_cache(self, blob):
            return TimingCache(blob)

        def set_timing_cache(self, cache, ignore_mismatch):
            self.cache = cache
            return True

        def get_timing_cache(self):
            return self.cache

        if major < 11:
            def set_calibration_profile(self, profile):
                self.calibration_profile = profile
    return Config


def _builder_class(major, config_cls, record):
    class Builder:
        def __init__(self, logger):
            self.networks = []
            record["builders"].append(self)
            if major < 11:
                self.platform_has_fast_fp16 = True
                self.platform_has_fast_int8 = True

        def create_network(self, flags):
            self.networks.append(Network(flags))
            return self.networks[-1]

        def create_builder_config(self):
            return config_cls()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            cal = getattr(config, "int8_calibrator", None)
            batches = 0
            if cal is not None:
                if cal.read_calibration_cache() is None:
                    while cal.get_batch(["images"]) is not None:
                        batches += 1
                    cal.write_calibration_cache(b"fake calibration table")
            kinds = [layer.type for layer in network.layers]
            plan = {"parsed": network.parsed, "network_flags": network.flags, "calibration_batches": batches,
                    "nms_layers": kinds.count("NMS"), "plugin_layers": kinds.count("PLUGIN_V2"),
                    "flags": sorted(str(f) for f in config.flags), "calibrator": cal is not None,
                    "cleared_flags": sorted(str(f) for f in config.cleared), "tf32": config.get_flag("TF32")}
            record["plans"].append(plan)
            return json.dumps(plan).encode()
    return Builder


def fake_tensorrt(major: int = 11, version: str | None = None, plugins: tuple[str, ...] = ("1",)
                  ) -> types.SimpleNamespace:
    """A fake ``tensorrt`` module of generation ``major`` whose plugin registry holds
    EfficientNMS_TRT ``plugins`` (versions; () = none); ``record`` holds builders, plans and parses."""
    record = {"builders": [], "plans": [], "parsed": []}
    creators = [types.SimpleNamespace(name=PLUGIN_NAME, plugin_version=v, plugin_namespace="") for v in plugins]
    flag_names = ("EXPLICIT_BATCH", "STRONGLY_TYPED") if major < 11 else ("STRONGLY_TYPED",)
    builder_flags = ("FP16", "INT8", "TF32") if major < 11 else ("TF32",)

    class Logger:
        ERROR, WARNING, VERBOSE = 1, 2, 4

        def __init__(self, level):
            self.level = level

    class Parser:
        def __init__(self, network, logger):
            self.network, self.num_errors, self.errors = network, 0, []

        def parse_from_file(self, path):
            record["parsed"].append(str(path))
            model = onnx.load(str(path), load_external_data=False)
            for n in model.graph.node:
                attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
                version = attrs.get("plugin_version", b"1")
                version = version.decode() if isinstance(version, bytes) else str(version)
                if n.op_type == PLUGIN_NAME and version not in plugins:
                    self.errors.append(f"{n.name}: Plugin not found, are the plugin name, version, and namespace "
                                       f"correct? ({PLUGIN_NAME} {version})")
            self.num_errors = len(self.errors)
            if self.errors:
                return False
            self.network.populate(path)
            return True

        def get_error(self, i):
            return self.errors[i]

    mod = types.SimpleNamespace(
        __version__=version or ("11.4.0.106" if major >= 11 else "10.3.0"), record=record, Logger=Logger,
        Builder=_builder_class(major, _config_class(major), record), OnnxParser=Parser,
        NetworkDefinitionCreationFlag=types.SimpleNamespace(**{n: i for i, n in enumerate(flag_names)}),
        BuilderFlag=types.SimpleNamespace(**{n: n for n in builder_flags}),
        MemoryPoolType=types.SimpleNamespace(WORKSPACE="WORKSPACE"),
        DataType=types.SimpleNamespace(**{n: n for n in NP}),
        LayerType=types.SimpleNamespace(QUANTIZE="QUANTIZE", DEQUANTIZE="DEQUANTIZE", CONVOLUTION="Conv", NMS="NMS",
                                        PLUGIN_V2="PLUGIN_V2"),
        nptype=lambda t: NP[t], init_libnvinfer_plugins=lambda logger, ns: True,
        get_plugin_registry=lambda: types.SimpleNamespace(all_creators=list(creators)))
    if major < 11:
        class IInt8EntropyCalibrator2:
            def __init__(self):
                pass
        mod.IInt8EntropyCalibrator2 = IInt8EntropyCalibrator2
    return mod


class FakeCuda:
    """export.trt.env.CudaBackend's interface: one fake GPU of compute capability ``cc``."""

    kind = "fake"

    def __init__(self, cc=(8, 9)):
        self.cc, self.copies, self.freed = cc, 0, 0

    def device_count(self):
        return 1

    def device_info(self):
        return "Fake GPU", self.cc

    def malloc(self, n):
        return 4096

    def htod(self, ptr, array):
        self.copies += 1

    def free(self, ptr):
        self.freed += 1

    @staticmethod
    def pointer(p):
        return int(p)


class FakeDetector:
    """Stands in for runtime's TRTDetector: "runs" a fake plan by running the CPU reference of the
    ONNX the plan says was parsed (the plugin's reference, or ONNX Runtime for an ONNX-NMS graph)."""

    def __init__(self, path, **kwargs):
        from export.trt.verify import cpu_reference
        self.plan = json.loads(Path(path).read_bytes())
        self.infer = cpu_reference(Path(self.plan["parsed"]))

    def close(self):
        pass


def quiet(_msg: str) -> None:
    """A build log that drops every line."""


def cli_args(**kw):
    """``python -m export.trt``'s parsed defaults with ``kw`` set (an argparse.Namespace)."""
    from export import trt as T
    ns = T.build_parser().parse_args([])
    for k, v in kw.items():
        setattr(ns, k, v)
    return ns
