"""Checkpoint -> ONNX graphs (+ NMS) -> TensorRT engine, as separate steps. Imports nothing heavy
at package import.

Steps (each a function of files in, files out, usable on its own):
    export.onnx.export_graphs(checkpoint, out_dir) -> ExportArtifacts   raw / trt-plugin / ONNX-NMS graphs + sidecars
    export.quantize.quantize_int8(raw_onnx, images, ...)               model_int8.onnx + sidecar
    export.fp16.convert_fp16(trt_onnx, images)                         model_trt_fp16.onnx + sidecar (TensorRT >= 11 FP16)
    export.qdq_trt.quantize_trt_int8(trt_onnx, images, ...)            model_trt_int8.onnx + sidecar (TensorRT >= 11 INT8)
    export.verify.verify_exports(graphs, model, anchors, images)       numeric agreement with PyTorch
    export.trt.build_engine(BuildSettings)                             TensorRT engine + sidecar (strongly typed on
                                                                       TensorRT >= 11, builder flags on 8.6-10.x)
    export.onnx.export_onnx(checkpoint, out_dir, ...)                  all ONNX steps + export_report.json

Modules: export.graphs (graph surgery: the tails and the EfficientNMS_TRT node), export.plugin_split
(the plugin graph cut at EfficientNMS_TRT for rewrites), export.variants / export.verify_variants (the
TensorRT 11 graphs and their check against model_trt.onnx), export.artifacts
(writing checked graphs with metadata), export.data (images, datasets, the latest-run lookup),
export.report, export.trt (settings, calibrator, builder, verify, cli, env).
Command lines: ``python -m export.onnx --help``, ``python -m export.trt --help``.
"""
