"""Integer reference model (the contract every hardware block must meet).

- :func:`run` walks a :class:`hwgen.ir.QGraph` op by op in integer arithmetic, bit-exact
  with onnxruntime's integer kernels (ops.py; the arithmetic is in docs/arithmetic.md).
- :func:`run_float` is the float reference of a :class:`hwgen.ir.Graph`.
- :func:`agreement` compares the two (float vs int8 top-1 on N inputs).
"""
from .float_ref import run_float
from .runner import agreement, run, top1

__all__ = ["run", "run_float", "agreement", "top1"]
