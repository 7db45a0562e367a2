"""The library functions behind each CLI subcommand.

MODEL is a zoo name or a path to an .onnx file everywhere a model is taken; zoo models take
the model options (see :func:`load`).
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from . import ir


class FlowError(ValueError):
    """A user-facing error in the flow (bad file, bad option, model does not fit...)."""


def user_errors() -> tuple[type[BaseException], ...]:
    """Exception types the CLI reports as one-line user errors."""
    errs: list[type[BaseException]] = [FlowError, ir.IRError, FileNotFoundError, ValueError]
    from .frontend.onnx import OnnxImportError
    from .prog import ProgramError
    from .synth import ToolError
    from firmware.host import ProtocolError
    errs += [OnnxImportError, ProgramError, ToolError, ProtocolError]
    return tuple(errs)


def is_onnx(model: str) -> bool:
    return str(model).lower().endswith(".onnx")


def list_models() -> list[dict]:
    from .models import MODELS
    import inspect
    rows = []
    for name, fn in MODELS.items():
        sig = inspect.signature(fn)
        opts = ", ".join(f"{k}={v.default!r}" for k, v in sig.parameters.items())
        doc = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
        rows.append({"name": name, "description": doc, "options": opts})
    return rows


def load(model: str, **opts) -> ir.Graph | ir.QGraph:
    """A zoo model (float Graph) or an ONNX file (Graph if float, QGraph if quantized)."""
    if is_onnx(model):
        path = Path(model)
        if not path.exists():
            raise FlowError(f"no such ONNX file: {model}")
        from .frontend.onnx import load as load_onnx
        return load_onnx(path)
    from .models import MODELS, build
    if model not in MODELS:
        raise FlowError(f"unknown model '{model}': choose one of {', '.join(MODELS)} or give a .onnx file")
    weights = opts.get("weights")
    if weights is not None and str(weights).lower().endswith(".onnx"):
        opts = dict(opts)
        opts["weights"] = _onnx_weights_npz(model, weights, opts)
    return build(model, **opts)


def _onnx_weights_npz(model: str, path: str, opts: dict) -> str:
    """Weights for a zoo model taken from an ONNX file's initializers (an export of the same
    architecture): written to a temporary npz the zoo builder loads."""
    from .frontend.onnx import load as load_onnx
    g = load_onnx(Path(path))
    g = g.graph if isinstance(g, ir.QGraph) else g
    arrays = {}
    for n in g.nodes:
        if isinstance(n, (ir.Conv2d, ir.FullyConnected)):
            arrays[f"{n.name}.weight"] = n.weight
            arrays[f"{n.name}.bias"] = n.bias
    fd, tmp = tempfile.mkstemp(suffix=".npz")
    os.close(fd)
    np.savez(tmp, **arrays)
    return tmp


def quantized(model: str, **opts) -> ir.QGraph:
    """The model as a QGraph: quantized by hwgen (seeded calibration) unless the file already is."""
    g = load(model, **opts)
    if isinstance(g, ir.QGraph):
        return g
    from .quantize import quantize
    return quantize(g, seed=opts.get("seed", 0))


def summary(model: str, **opts) -> dict:
    from .summary import summarize
    g = load(model, **opts)
    return summarize(g.graph if isinstance(g, ir.QGraph) else g)


def plan(model: str, board: str = "ulx3s", device: str | None = None, out: str | Path | None = None,
         **opts):
    """Map the model onto a board (:func:`hwgen.mapper.plan`); with ``out``, write the layer
    program, weight image and layers.json there. Returns the Plan (fits or not)."""
    import boards
    from .mapper import plan as make_plan
    from .mapper.program import write_build_files
    b = boards.get_board(board, device)
    qg = quantized(model, **opts)
    source = None if is_onnx(model) else (model, opts)
    p = make_plan(qg, b, source=source)
    if out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
        write_build_files(p, Path(out))
    return p, source


def _atomic_target(out: str | Path) -> Path:
    out = Path(out)
    if out.parent and not out.parent.exists():
        raise FlowError(f"output folder {out.parent} does not exist")
    return out


def export(model: str, out: str | Path, quantized: bool = False, **opts) -> Path:
    """Write the model as float ONNX, or (quantized=True) as int8 QDQ ONNX."""
    from .frontend.onnx import export_float, export_qdq
    out = _atomic_target(out)
    if quantized:
        export_qdq(globals()["quantized"](model, **opts), out)
    else:
        g = load(model, **opts)
        if isinstance(g, ir.QGraph):
            raise FlowError(f"{model} is already quantized: export it with --quantized")
        export_float(g, out)
    return out


def golden(model: str, input_path: str, output_path: str, **opts) -> dict:
    """Run the integer golden model on IN.npy, write OUT.npy.

    Zoo model: IN is float (quantized with the model's input parameters) or int8 (used as
    is); OUT is the int8 logits (N, classes). ONNX file: OUT has the dtype and shape
    onnxruntime returns for the same input (a batch runs as N single-image runs).
    """
    from . import golden as gold
    x = np.load(input_path)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4:
        raise FlowError(f"input {input_path} has shape {x.shape}: expected (N, C, H, W) or (C, H, W)")
    qg = quantized(model, **opts)
    if tuple(x.shape[1:]) != tuple(qg.graph.input_shape):
        raise FlowError(f"input {input_path} has shape {x.shape[1:]} per image, the model takes "
                        f"{qg.graph.input_shape} (C, H, W)")
    if is_onnx(model):
        info = onnx_io_info(Path(model))
        xq = _to_int_input(x, qg, info["input_dtype"])
        y = gold.run(qg, xq)
        y = _from_int_output(y, qg, info["output_dtype"]).reshape((x.shape[0], *info["output_shape"][1:]))
    else:
        xq = _to_int_input(x, qg, "float32" if np.issubdtype(x.dtype, np.floating) else str(x.dtype))
        y = gold.run(qg, xq).reshape(x.shape[0], -1)
    out = Path(output_path)
    tmp = out.with_name(out.name + ".tmp.npy")
    np.save(tmp, y)
    os.replace(tmp, out)
    return {"output": str(out), "shape": list(y.shape), "dtype": str(y.dtype)}


def onnx_io_info(path: Path) -> dict:
    """dtype of the first graph input and output, and the output shape (batch as 1)."""
    import onnx
    from onnx import helper
    m = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in m.graph.initializer}
    inp = next(i for i in m.graph.input if i.name not in inits)
    out = m.graph.output[0]

    def dtype(v):
        return str(np.dtype(helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type)))
    dims = [d.dim_value if d.HasField("dim_value") else 1 for d in out.type.tensor_type.shape.dim]
    return {"input_dtype": dtype(inp), "output_dtype": dtype(out), "output_shape": dims}


def _to_int_input(x: np.ndarray, qg: ir.QGraph, dtype: str) -> np.ndarray:
    q = qg.input_q
    if dtype.startswith("float"):
        xq = q.quantize(x.astype(np.float32))
        return xq if qg.io_dtype == "int8" else (xq.astype(np.int16) + 128).astype(np.uint8)
    if dtype not in (str(x.dtype), qg.io_dtype) and not np.issubdtype(x.dtype, np.integer):
        raise FlowError(f"input dtype {x.dtype} does not match the model's {dtype}")
    return x.astype(np.uint8 if qg.io_dtype == "uint8" else np.int8)


def _from_int_output(y: np.ndarray, qg: ir.QGraph, dtype: str) -> np.ndarray:
    if dtype.startswith("float"):
        yi = y.astype(np.int16) - (128 if qg.io_dtype == "uint8" else 0)
        return qg.output_q.dequantize(yi).astype(np.float32)
    return y
