"""Checkpoint -> ONNX graphs (+ NMS) -> TensorRT engine, as separate steps. Imports nothing heavy
at package import.

Steps (each a function of files in, files out, usable on its own):
    export.onnx.export_graphs(checkpoint, out_dir) -> ExportArtifacts   raw / trt-plugin / ONNX-NMS graphs + sidecars
    export.quantize.quantize_int8(raw_onnx, images, ...)               model_int8.onnx + sidecar
    export.verify.verify_exports(graphs, model, anchors, images)       numeric agreement with PyTorch
    export.trt.build_engine(BuildSettings)                             TensorRT engine + sidecar (TensorRT 8.6-10.x)
    export.onnx.export_onnx(checkpoint, out_dir, ...)                  all ONNX steps + export_report.json

Modules: export.graphs (graph surgery: the tails and the EfficientNMS_TRT node), export.artifacts
(writing checked graphs with metadata), export.data (images, datasets, the latest-run lookup),
export.report, export.trt (settings, calibrator, builder, verify, cli, env).
Command lines: ``python -m export.onnx --help``, ``python -m export.trt --help``.
"""
