"""Accuracy of a trained model on real inputs: golden model vs onnxruntime (issue 2, section 6).

A small MobileNet-style CNN is trained in NumPy on scikit-learn's 8x8 digits
(tests/digits_model.py; first 1400 images train, 397 test), exported with
:func:`hwgen.frontend.onnx.export_float` and quantized by onnxruntime's ``quantize_static``
(calibration: real training images) in QOperator and QDQ formats with uint8 and int8
activations, and by hwgen's own quantizer (exported with ``export_qdq``). On the whole test
split, the golden model (through :func:`hwgen.flow.golden`, the ``hwgen golden`` CLI path:
float input quantized as the file's QuantizeLinear does, output as onnxruntime returns it)
must reach exactly onnxruntime's accuracy; where onnxruntime runs its integer kernels
throughout, the outputs must be identical too.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

import digits_model as D
from hwgen import flow, golden, ir
from hwgen.frontend.onnx import export_float, export_qdq, load, run_onnxruntime

N_CALIB = 64


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    g, xtr, ytr, xte, yte, acc = D.trained_digits()
    fp = export_float(g, os.path.join(tmp_path_factory.mktemp("digits"), "digits.onnx"))
    return dict(graph=g, xtr=xtr, ytr=ytr, xte=xte, yte=yte, acc=acc, float_path=fp)


def accuracy(logits, labels) -> float:
    return float(np.mean(golden.top1(logits) == labels))


class DigitsReader:
    """onnxruntime CalibrationDataReader over real training images, one per call."""

    def __init__(self, x: np.ndarray):
        self._it = iter([{"input": x[i:i + 1]} for i in range(len(x))])

    def get_next(self):
        return next(self._it, None)


def quantize_ort(float_path, out_path, x_calib, fmt: str, act: str,
                 per_channel: bool = True) -> str:
    """quant_pre_process + quantize_static, as onnxruntime's documentation runs them."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process
    pre = os.fspath(out_path) + ".pre.onnx"
    quant_pre_process(os.fspath(float_path), pre, skip_symbolic_shape=True)
    quantize_static(pre, os.fspath(out_path), DigitsReader(x_calib),
                    quant_format=QuantFormat.QDQ if fmt == "qdq" else QuantFormat.QOperator,
                    per_channel=per_channel,
                    activation_type=QuantType.QInt8 if act == "int8" else QuantType.QUInt8,
                    weight_type=QuantType.QInt8)
    return os.fspath(out_path)


def golden_like_ort(path, x, tmp_path) -> np.ndarray:
    """What ``hwgen golden FILE.onnx --input IN.npy --output OUT.npy`` writes for ``x``."""
    inp, out = os.path.join(tmp_path, "in.npy"), os.path.join(tmp_path, "out.npy")
    np.save(inp, x)
    flow.golden(os.fspath(path), inp, out)
    return np.load(out)


def to_steps(y: np.ndarray, qg: ir.QGraph) -> np.ndarray:
    """A dequantized float output back to integer steps of the output quantisation."""
    q = qg.output_q
    off = 128 if qg.io_dtype == "uint8" else 0
    return (np.rint(np.asarray(y, np.float32) / np.float32(q.scale)).astype(np.int32)
            + q.zero_point + off)


def test_float_model_trained(trained):
    """The NumPy training works and the IR/ONNX float models are that network."""
    assert trained["acc"] >= 0.90, trained["acc"]
    yf = golden.run_float(trained["graph"], trained["xte"])
    assert accuracy(yf, trained["yte"]) == trained["acc"]
    y_ort = run_onnxruntime(trained["float_path"], trained["xte"])
    assert accuracy(y_ort, trained["yte"]) == trained["acc"]
    np.testing.assert_allclose(y_ort, yf.reshape(y_ort.shape), rtol=1e-4, atol=1e-4)


ORT_CASES = [(fmt, act, True) for act in ("uint8", "int8") for fmt in ("qop", "qdq")] + [
    ("qop", "uint8", False), ("qdq", "uint8", False)]   # quantize_static's per-tensor default


@pytest.mark.parametrize("fmt, act, per_channel", ORT_CASES,
                         ids=[f"{f}-{a}-{'per_channel' if p else 'per_tensor'}"
                              for f, a, p in ORT_CASES])
def test_ort_quantized_accuracy_equal(trained, tmp_path, fmt, act, per_channel):
    qp = quantize_ort(trained["float_path"], tmp_path / "q.onnx", trained["xtr"][:N_CALIB], fmt,
                      act, per_channel)
    qg = load(qp)
    assert isinstance(qg, ir.QGraph) and qg.io_dtype == act
    xte, yte = trained["xte"], trained["yte"]
    y_ort = run_onnxruntime(qp, xte)
    y_gold = golden_like_ort(qp, xte, tmp_path)
    assert y_gold.dtype == y_ort.dtype and y_gold.shape == y_ort.shape
    acc_ort, acc_gold = accuracy(y_ort, yte), accuracy(y_gold, yte)
    d = np.abs(to_steps(y_gold, qg) - to_steps(y_ort, qg))
    print(f"\n{fmt} {act} per_channel={per_channel}: float {trained['acc']:.4f}  onnxruntime {acc_ort:.4f}  golden "
          f"{acc_gold:.4f}  outputs identical {np.mean(d == 0):.4f} (max {d.max()} steps)")
    assert int(np.sum(golden.top1(y_gold) == yte)) == int(np.sum(golden.top1(y_ort) == yte))
    if fmt == "qop" or act == "uint8":
        # onnxruntime's integer kernels throughout: bit-exact
        np.testing.assert_array_equal(y_gold, y_ort)
    assert abs(acc_ort - trained["acc"]) <= 0.03, (acc_ort, trained["acc"])


@pytest.mark.parametrize("io_dtype", ["int8", "uint8"])
def test_hwgen_quantized_accuracy_equal(trained, tmp_path, io_dtype):
    from hwgen.quantize import quantize
    qg = quantize(trained["graph"], calib=trained["xtr"][:N_CALIB])
    qg = ir.QGraph(qg.graph, qg.act_q, qg.weights, io_dtype)
    qp = export_qdq(qg, tmp_path / "q.onnx")
    xte, yte = trained["xte"], trained["yte"]
    xq = qg.input_q.quantize(xte)
    if io_dtype == "uint8":
        xq = (xq.astype(np.int16) + 128).astype(np.uint8)
    y_int = golden.run(qg, xq)
    y_ort = run_onnxruntime(qp, xte)
    # the exported file reads back to the same quantisation, and `hwgen golden` on it
    # gives the same result as the golden model on the in-memory QGraph
    y_file = golden_like_ort(qp, xte, tmp_path)
    np.testing.assert_array_equal(to_steps(y_file, qg).reshape(y_int.shape), y_int)
    acc_int, acc_ort = accuracy(y_int, yte), accuracy(y_ort, yte)
    d = np.abs(to_steps(y_ort, qg).reshape(y_int.shape) - y_int.astype(np.int32))
    print(f"\nhwgen {io_dtype}: float {trained['acc']:.4f}  golden {acc_int:.4f}  onnxruntime "
          f"{acc_ort:.4f}  outputs identical {np.mean(d == 0):.4f} (max {d.max()} steps)")
    assert int(np.sum(golden.top1(y_int) == yte)) == int(np.sum(golden.top1(y_ort) == yte))
    if io_dtype == "uint8":
        np.testing.assert_array_equal(to_steps(y_ort, qg).reshape(y_int.shape), y_int)
    assert abs(acc_int - trained["acc"]) <= 0.02, (acc_int, trained["acc"])
