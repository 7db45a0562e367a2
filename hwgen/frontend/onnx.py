"""ONNX in and out: the public API of hwgen's ONNX frontend.

* :func:`load` — float ONNX -> :class:`ir.Graph`; QDQ or QOperator ONNX (as written by
  ``onnxruntime.quantization.quantize_static``) -> :class:`ir.QGraph`.
* :func:`export_float` / :func:`export_qdq` — IR -> ONNX files onnxruntime runs.
* :func:`run_onnxruntime` — run an ONNX file on a batch with onnxruntime's CPU kernels.

ONNX protobufs stay inside this package; the rest of hwgen sees only IR objects.
"""
from __future__ import annotations

import os

import numpy as np

from .onnx_export import OnnxExportError, export_float, export_qdq
from .onnx_import import OnnxImportError, load

__all__ = ["load", "export_float", "export_qdq", "run_onnxruntime", "OnnxImportError",
           "OnnxExportError"]


def run_onnxruntime(path, x, optimize: bool = True, threads: int = 1) -> np.ndarray:
    """Run an ONNX file with onnxruntime (CPU) and return its first output.

    Parameters
    ----------
    path: the .onnx file.
    x: the input batch (N, C, H, W); cast to the model's input type. When the file fixes the
        batch to 1 and N > 1, the images run one by one and the results are stacked, as N
        separate onnxruntime runs would give.
    optimize: graph optimisations (``ORT_ENABLE_ALL``, the default: QDQ models then run
        onnxruntime's integer kernels) or none (``ORT_DISABLE_ALL``).
    threads: intra-op threads.

    Returns
    -------
    The first graph output, with the dtype and shape onnxruntime returns.
    """
    import onnxruntime as ort

    path = os.fspath(path)
    if not os.path.exists(path):
        raise OnnxImportError(f"'{path}': no such file")
    so = ort.SessionOptions()
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                   else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    try:
        sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise OnnxImportError(f"onnxruntime cannot load '{path}': {str(e).splitlines()[0]}") from None
    inp = sess.get_inputs()[0]
    dtype = {"tensor(float)": np.float32, "tensor(uint8)": np.uint8, "tensor(int8)": np.int8,
             "tensor(float16)": np.float16, "tensor(double)": np.float64}.get(inp.type)
    if dtype is None:
        raise OnnxImportError(f"input '{inp.name}' has type {inp.type}; float or (u)int8 supported")
    x = np.asarray(x)
    if dtype in (np.uint8, np.int8) and x.dtype != dtype:
        raise TypeError(f"the model takes {np.dtype(dtype).name} input, got {x.dtype}")
    x = x.astype(dtype, copy=False)
    if x.ndim != len(inp.shape):
        raise ValueError(f"input must have rank {len(inp.shape)} {inp.shape}, got shape {x.shape}")
    out = sess.get_outputs()[0].name
    if isinstance(inp.shape[0], int) and inp.shape[0] != x.shape[0]:
        if inp.shape[0] != 1:
            raise ValueError(f"the model fixes the batch to {inp.shape[0]}, got {x.shape[0]} images")
        return np.concatenate([sess.run([out], {inp.name: x[i:i + 1]})[0] for i in range(len(x))])
    return sess.run([out], {inp.name: x})[0]
