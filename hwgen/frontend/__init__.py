"""Model frontends: ONNX import (float, QDQ, QOperator) and export (float, QDQ).

The public API lives in :mod:`hwgen.frontend.onnx`.
"""
from .onnx import (OnnxExportError, OnnxImportError, export_float, export_qdq, load,
                   run_onnxruntime)

__all__ = ["load", "export_float", "export_qdq", "run_onnxruntime", "OnnxImportError",
           "OnnxExportError"]
