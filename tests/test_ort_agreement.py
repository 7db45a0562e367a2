"""Golden model vs onnxruntime's integer kernels on imported quantized models.

The reference is onnxruntime itself: QOperator files (integer kernels by construction) and
QDQ files with graph optimisations on (fused into QLinearConv etc.). Each model is checked
on 20 seeded random inputs:

* layer by layer, every IR node fed onnxruntime's own input tensors (read back by adding
  them as graph outputs): >= 99.9 % of the elements identical, none more than one step
  apart;
* end to end: top-1 identical on >= 95 % of the inputs, median absolute difference <= 1.

Models: hand-built graphs in the style of Keras/tf2onnx and torchvision/torch.onnx exports
(tests/onnx_models.py) quantized with onnxruntime's quantize_static; the zoo networks
exported with export_float and quantized the same way; the zoo networks quantized by hwgen
and exported with export_qdq. An extra test exports real torchvision models when torch is
installed.
"""
from __future__ import annotations

import os

import numpy as np
import onnx
import pytest

import onnx_models as M
from hwgen import ir
from hwgen.frontend.onnx import export_float, export_qdq
from hwgen.frontend.onnx_import import import_model

N_INPUTS = 20


def check(path, shape, seed=7, optimize=True) -> dict:
    model = onnx.load(path)
    r = import_model(model)
    assert isinstance(r.graph, ir.QGraph)
    xs = np.random.default_rng(seed).normal(0, 1, (N_INPUTS, *shape)).astype(np.float32)
    res = M.compare_with_ort(r.graph, r.int_names, model, xs, optimize=optimize,
                             onnx_names=r.onnx_names)
    bad = [l for l in res["layers"] if l[2] < 0.999 or l[3] > 1]
    assert not bad, f"layers off: {bad}"
    assert res["top1"] >= 0.95, res
    assert res["median_step"] <= 1, res
    return res


# --- models in the style of other projects' exporters, quantized by onnxruntime -----------

@pytest.mark.parametrize("name", list(M.MODELS))
@pytest.mark.parametrize("fmt", ["qdq", "qop"])
@pytest.mark.parametrize("act", ["uint8", "int8"])
def test_exporter_style_models(tmp_path, name, fmt, act):
    fp = os.path.join(tmp_path, "f.onnx")
    onnx.save(M.MODELS[name](), fp)
    qp = M.quantize(fp, os.path.join(tmp_path, "q.onnx"), fmt=fmt, activation=act)
    res = check(qp, M.SHAPES[name])
    if act == "uint8" or fmt == "qop":
        # onnxruntime's integer kernels throughout: bit-exact
        assert res["min_identical"] == 1.0 and res["end_identical"] == 1.0, res


@pytest.mark.parametrize("fmt", ["qdq", "qop"])
@pytest.mark.parametrize("act", ["uint8", "int8"])
def test_unfused_pad_quantized(tmp_path, fmt, act):
    """Without quant_pre_process the Keras ZeroPadding2D stays a Pad of the quantized
    tensor (QOperator: pad value = the zero point); it merges into the next conv."""
    fp = os.path.join(tmp_path, "f.onnx")
    onnx.save(M.keras_like(seed=1, bn=False), fp)
    qp = M.quantize(fp, os.path.join(tmp_path, "q.onnx"), fmt=fmt, activation=act,
                    preprocess=False)
    assert "Pad" in [n.op_type for n in onnx.load(qp).graph.node]
    qg = import_model(onnx.load(qp)).graph
    assert qg.graph.nodes[0].padding == (0, 0, 1, 1)
    res = check(qp, (3, 32, 32))
    if act == "uint8" or fmt == "qop":
        assert res["min_identical"] == 1.0 and res["end_identical"] == 1.0, res


@pytest.mark.parametrize("fmt, options", [
    ("qop", dict(extra_options={"ActivationSymmetric": True})),   # Relu stays, in float
    ("qdq", dict(extra_options={"ActivationSymmetric": True})),
    ("qdq", dict(extra_options={"QDQKeepRemovableActivations": True})),
    ("qop", dict(reduce_range=True)),
], ids=["symmetric-qop", "symmetric-qdq", "keep-relu-qdq", "reduce-range-qop"])
def test_quantize_static_options(tmp_path, fmt, options):
    fp = os.path.join(tmp_path, "f.onnx")
    onnx.save(M.torchvision_like(seed=2), fp)
    qp = M.quantize(fp, os.path.join(tmp_path, "q.onnx"), fmt=fmt, **options)
    res = check(qp, (3, 32, 32))
    if fmt == "qop":  # int8 QDQ: some convs run in float in onnxruntime (see test_onnx_export)
        assert res["min_identical"] == 1.0 and res["end_identical"] == 1.0, res


def test_per_tensor_weights(tmp_path):
    """quantize_static's default (per_channel=False): one weight scale per tensor."""
    fp = os.path.join(tmp_path, "f.onnx")
    onnx.save(M.keras_like(seed=3), fp)
    qp = M.quantize(fp, os.path.join(tmp_path, "q.onnx"), fmt="qop", per_channel=False,
                    activation="uint8")
    res = check(qp, (3, 32, 32))
    assert res["min_identical"] == 1.0 and res["end_identical"] == 1.0


# --- zoo networks ---------------------------------------------------------------------------

ZOO = {
    "mobilenet": dict(alpha=0.25, resolution=32, classes=10),
    "squeezenet": dict(version="1.1", resolution=32, classes=10),
    "shufflenet": dict(groups=3, scale=0.5, resolution=32, classes=10),
    "xception": dict(width=0.0625, middle_repeats=1, resolution=71, classes=10),
}
FAST_ZOO = ("mobilenet", "shufflenet")


def _zoo_params():
    return [pytest.param(n, marks=() if n in FAST_ZOO else pytest.mark.slow) for n in ZOO]


@pytest.mark.parametrize("name", _zoo_params())
@pytest.mark.parametrize("fmt", ["qdq", "qop"])
def test_zoo_quantized_by_onnxruntime(tmp_path, name, fmt):
    models = pytest.importorskip("hwgen.models")
    g = models.build(name, **ZOO[name])
    fp = export_float(g, os.path.join(tmp_path, "f.onnx"))
    qp = M.quantize(fp, os.path.join(tmp_path, "q.onnx"), fmt=fmt, activation="uint8")
    res = check(qp, g.input_shape)
    assert res["min_identical"] == 1.0 and res["end_identical"] == 1.0, res


@pytest.mark.parametrize("name", _zoo_params())
@pytest.mark.parametrize("io_dtype", ["uint8", "int8"])
def test_zoo_quantized_by_hwgen(tmp_path, name, io_dtype):
    models = pytest.importorskip("hwgen.models")
    quantize = pytest.importorskip("hwgen.quantize").quantize
    qg = quantize(models.build(name, **ZOO[name]))
    qg = ir.QGraph(qg.graph, qg.act_q, qg.weights, io_dtype)
    qp = export_qdq(qg, os.path.join(tmp_path, "q.onnx"))
    res = check(qp, qg.graph.input_shape)
    if io_dtype == "uint8":
        assert res["min_identical"] == 1.0 and res["end_identical"] == 1.0, res


@pytest.mark.slow
@pytest.mark.parametrize("name, cfg", [
    ("mobilenet", dict(alpha=0.25, resolution=128, classes=1000)),
    ("shufflenet", dict(groups=3, scale=0.5, resolution=96, classes=1000)),
], ids=["mobilenet-0.25-128", "shufflenet-g3-0.5-96"])
@pytest.mark.parametrize("source", ["ort-qop-uint8", "ort-qdq-uint8", "hwgen-int8"])
def test_larger_zoo_models(tmp_path, name, cfg, source):
    models = pytest.importorskip("hwgen.models")
    g = models.build(name, **cfg)
    if source == "hwgen-int8":
        qp = export_qdq(pytest.importorskip("hwgen.quantize").quantize(g),
                        os.path.join(tmp_path, "q.onnx"))
    else:
        fp = export_float(g, os.path.join(tmp_path, "f.onnx"))
        qp = M.quantize(fp, os.path.join(tmp_path, "q.onnx"), fmt=source.split("-")[1],
                        activation="uint8")
    res = check(qp, g.input_shape)
    if source != "hwgen-int8":
        assert res["min_identical"] == 1.0 and res["end_identical"] == 1.0, res


# --- real torchvision exports (extra; needs torch, not a dependency) -----------------------

def export_torchvision(arch: str, path, res: int = 64, dynamic: bool = False) -> str:
    """Export a torchvision model with seeded random weights (test-only helper)."""
    torch = pytest.importorskip("torch", reason="torch is not installed (optional extra)")
    tv = pytest.importorskip("torchvision", reason="torchvision is not installed (optional extra)")
    torch.manual_seed(0)
    net = getattr(tv.models, arch)(weights=None, num_classes=10).eval()
    kw = dict(input_names=["input"], output_names=["logits"], opset_version=M.OPSET)
    if dynamic:
        kw["dynamic_axes"] = {"input": {0: "N"}, "logits": {0: "N"}}
    x = torch.randn(1, 3, res, res)
    try:
        torch.onnx.export(net, x, str(path), dynamo=False, **kw)
    except TypeError:  # torch without the dynamo switch
        torch.onnx.export(net, x, str(path), **kw)
    return str(path)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["mobilenet_v2", "shufflenet_v2_x0_5"])
@pytest.mark.parametrize("fmt", ["qdq", "qop"])
@pytest.mark.parametrize("dynamic", [False, True])
def test_torchvision_export(tmp_path, arch, fmt, dynamic):
    fp = export_torchvision(arch, os.path.join(tmp_path, "f.onnx"), dynamic=dynamic)
    qp = M.quantize(fp, os.path.join(tmp_path, "q.onnx"), fmt=fmt, activation="uint8")
    check(qp, (3, 64, 64))
