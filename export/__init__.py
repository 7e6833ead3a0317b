"""Checkpoint -> ONNX graphs (+ NMS) -> TensorRT engine. Imports nothing heavy at package import.

Public API:
    export.onnx.export_onnx(checkpoint, out_dir, *, int8=False, calib_images=None, ...) -> dict
    export.graphs: add_raw_tail, add_plugin_inputs_tail, insert_efficient_nms, add_onnx_nms_tail
    export.trt.EngineBuilder, export.trt.build_engine(BuildSettings) (TensorRT 8.6-10.x)
    runtime.trt_reference.TrtGraphReference / run_trt_graph_reference (plugin graph on CPU)
Command lines: ``python -m export.onnx --help``, ``python -m export.trt --help``.
"""
