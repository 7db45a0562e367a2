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


# --- board flow ---------------------------------------------------------------------------

def _board_plan(model: str, board: str, device: str | None, strict: bool, **opts):
    import boards
    from .mapper import plan as make_plan
    b = boards.get_board(board, device)
    qg = quantized(model, **opts)
    source = None if is_onnx(model) else (model, opts)
    return qg, make_plan(qg, b, strict=strict, source=source), b


def _model_record(model: str, opts: dict) -> dict:
    name = Path(model).stem if is_onnx(model) else model
    return {"name": name, "source": str(Path(model).resolve()) if is_onnx(model) else model,
            "options": {k: v for k, v in opts.items()}}


def default_pnr_jobs(pnr_seeds: int) -> int:
    """Seeds placed and routed at once by default: one per core this process may use, at
    most ``pnr_seeds`` (nextpnr-ecp5 runs single-threaded)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:          # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(pnr_seeds, cores))


def build(model: str, board: str = "ulx3s", device: str | None = None, clock_mhz: float = 100.0,
          out: str | Path = "build", allow_timing_fail: bool = False, synth_only: bool = False,
          retries: int = 2, progress=None, pnr_seed: int = 1, placer: str | None = None,
          pnr_seeds: int = 4, pnr_jobs: int | None = None, **opts) -> dict:
    """quantize -> map (fit check before any synthesis) -> generate -> synth -> PnR -> pack.

    Writes into ``out``: program.bin, weights.bin, layers.json, model.json, top.bit, top.svf,
    the tools' logs, report.json / report.md / report.html. Returns the report dict; raises
    :class:`FlowError` on a timing failure unless ``allow_timing_fail``.

    pnr_seed, pnr_seeds, pnr_jobs: nextpnr's seeds ``pnr_seed ..`` (up to ``pnr_seeds``
    at the asked clock), ``pnr_jobs`` at once (default :func:`default_pnr_jobs`).
    """
    import json as _json
    say = progress or (lambda stage, msg: None)
    say("map", f"quantizing and mapping {model}")
    qg, p, b = _board_plan(model, board, device, strict=True, **opts)   # fit check first
    from boards.build import DEFAULT_PLACER, build_bitstream
    from boards.top import ULX3STop
    from .hw.accelerator import Accelerator
    from .mapper.program import write_build_files
    from .report import make_report, write_reports
    outdir = Path(out)
    outdir.mkdir(parents=True, exist_ok=True)
    write_build_files(p, outdir)
    rec = _model_record(model, opts)
    (outdir / "model.json").write_text(_json.dumps(rec, indent=2) + "\n")
    say("map", f"{p.engines.describe()}; {p.cycles:,} cycles estimated by the mapper")
    res = build_bitstream(lambda mhz: ULX3STop(Accelerator(p), mhz), b, clock_mhz, outdir,
                          progress=say, synth_only=synth_only, retries=0 if synth_only else retries,
                          seed=pnr_seed, placer=placer or DEFAULT_PLACER, pnr_seeds=pnr_seeds,
                          pnr_jobs=pnr_jobs or default_pnr_jobs(pnr_seeds))
    report = make_report(p, res.to_dict(), None, rec)
    write_reports(report, outdir)
    if not synth_only and res.timing_met is False and not allow_timing_fail:
        raise FlowError(f"timing not met: Fmax {res.fmax_mhz:.1f} MHz < {res.clock_mhz:.1f} MHz asked "
                        f"(after {len(res.attempts)} retries); see {outdir / 'report.md'}. Ask a lower "
                        f"--clock, or pass --allow-timing-fail to keep the bitstream")
    return report


def sim(model: str, board: str = "ulx3s", device: str | None = None, input_path: str | None = None,
        **opts) -> dict:
    """Run one image through the planned accelerator in Verilator; bit-exact check vs golden."""
    from .sim import simulate
    qg, p, _ = _board_plan(model, board, device, strict=False, **opts)
    x = load_image(input_path, qg) if input_path else _seeded_image(qg, opts.get("seed", 0))
    r = simulate(qg, p, x)
    r["model"] = _model_record(model, opts)
    r["fits"] = p.fits
    return r


def _seeded_image(qg: ir.QGraph, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed + 1).uniform(-1, 1, (1, *qg.graph.input_shape)).astype(np.float32)
    return _to_int_input(x, qg, "float32")


def load_image(path: str, qg: ir.QGraph) -> np.ndarray:
    """An input image for the model: .npy (float (C,H,W)/(1,C,H,W), quantized with the model's
    input parameters, or already integer) or .png (8-bit RGB/gray, resized nearest-neighbour to
    the model's input, scaled to [-1, 1])."""
    from .image import read_png, resize_nearest
    p = Path(path)
    if not p.exists():
        raise FlowError(f"no such image: {path}")
    c, h, w = qg.graph.input_shape
    if p.suffix.lower() == ".png":
        img = read_png(p)                       # (H, W, channels) uint8
        if img.shape[2] != c:
            img = img[:, :, :1].repeat(c, axis=2) if img.shape[2] < c else img[:, :, :c]
        x = resize_nearest(img, h, w).transpose(2, 0, 1).astype(np.float32) / 127.5 - 1.0
        return _to_int_input(x[None], qg, "float32")
    x = np.load(p)
    x = x[None] if x.ndim == 3 else x
    if x.shape[1:] != (c, h, w) or x.shape[0] != 1:
        raise FlowError(f"image {path} has shape {x.shape}: expected ({c}, {h}, {w}) or (1, {c}, {h}, {w})")
    return _to_int_input(x, qg, "float32" if np.issubdtype(x.dtype, np.floating) else str(x.dtype))


def run_on_board(port: str, image: str, build_dir: str | Path = "build", check: bool = True) -> dict:
    """Send an image to the board over the UART link, read logits and cycles; check vs golden."""
    import json as _json
    from firmware.host import HostLink, open_serial
    rec_path = Path(build_dir) / "model.json"
    if not rec_path.exists():
        raise FlowError(f"{rec_path} not found: run `hwgen build` first (or pass --dir)")
    rec = _json.loads(rec_path.read_text())
    qg = quantized(rec["source"], **rec["options"])
    x = load_image(image, qg)
    xs = x[0].astype(np.int16) - (128 if qg.io_dtype == "uint8" else 0)
    link = HostLink(open_serial(port))
    logits, cycles = link.infer(xs.astype(np.int8))
    logits = np.asarray(logits, np.int8)
    out = {"logits": logits.tolist(), "cycles": int(cycles),
           "top5": [int(i) for i in np.argsort(-logits.astype(np.int16), kind="stable")[:5]]}
    if check:
        from . import golden as gold
        ref = gold.run(qg, x).reshape(-1).astype(np.int16) - (128 if qg.io_dtype == "uint8" else 0)
        out["golden"] = ref.tolist()
        out["bit_exact"] = bool(np.array_equal(ref, logits.astype(np.int16)))
    return out
