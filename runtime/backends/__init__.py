"""Backends of :class:`runtime.detector.Detector`, one file each, imported on use:

* ``torch_backend``          PyTorch checkpoint (CPU / CUDA, optional FP16); imports distill
* ``ort_backend``            ONNX Runtime (CPU; CUDA and TensorRT execution providers)
* ``trt_reference_backend``  CPU reference of the TensorRT plugin graph (no GPU needed)
* ``trt_backend``            native TensorRT engine (cuda-python or pycuda buffers, CUDA graphs)
"""
