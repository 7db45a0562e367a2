"""Whole-network accelerator (hwgen.hw.accelerator) in Verilator, bit-exact with hwgen.golden.run.

Runs through :func:`hwgen.sim.simulate` (its own cocotb test, hwgen/sim.py): the image
goes in through ``img_wr``, ``start``, one wait for ``done``, the logits out through
``out_addr``/``out_data``. Builds live under rtl_tests/sim_build/verilator/accel/ and are
keyed by the design, so weights and images vary without rebuilding.
"""
import numpy as np
import pytest

import boards
from hwgen import flow, mapper
from hwgen.sim import simulate
from rtl_tests import harness

BUILD = harness.BUILD_ROOT / "accel"


def _run(name, seed=0, images=1, **opts):
    qg = flow.quantized(name, **opts)
    p = mapper.plan(qg, boards.get_board("ulx3s", "85F"))
    rng = np.random.default_rng(seed)
    results = []
    for _ in range(images):
        x = rng.integers(-128, 128, (1,) + p.graph.input_shape).astype(np.int8)
        r = simulate(qg, p, x, build_dir=BUILD)
        np.testing.assert_array_equal(r["logits"], r["golden"])
        assert r["bit_exact"]
        assert r["cycles"] >= sum(l["cycles"] for l in r["per_layer_cycles"]) > 0
        results.append(r)
    return qg, p, results


def test_mobilenet_small():
    """MobileNet v1 0.25 at 32x32, 3 classes, and a corrupted channel store (same build)
    must not be bit-exact."""
    qg, p, rs = _run("mobilenet", alpha=0.25, resolution=32, classes=3)
    x = np.random.default_rng(5).integers(-128, 128, (1,) + p.graph.input_shape).astype(np.int8)
    bad = simulate(qg, p, x, build_dir=BUILD, _inject_bug=True)
    assert not bad["bit_exact"]


def test_shufflenet_small():
    """ShuffleNet v1 g=3 0.25x at 32x32, 4 classes: every unit in one small network (max
    pool, average-pool shortcut, residual add, channel shuffle and concat through the place
    table, group convs, depthwise, global pool, FC)."""
    _run("shufflenet", groups=3, scale=0.25, resolution=32, classes=4)


@pytest.mark.slow
def test_mobilenet_vww():
    """MobileNet v1 0.25 at 96x96, 2 classes (visual wake words)."""
    _run("mobilenet", alpha=0.25, resolution=96, classes=2)


@pytest.mark.slow
def test_squeezenet():
    """SqueezeNet 1.1 at 64x64, 10 classes (fire concat as address remaps, ceil-mode max
    pooling with rescale tables). Simulated without the block-RAM fit check."""
    _run("squeezenet", version="1.1", resolution=64, classes=10)


@pytest.mark.slow
def test_xception_small():
    """Xception width 0.125, one middle block, 71x71, 10 classes (depthwise separable convs,
    strided max pooling, residual adds through the Adder engine)."""
    _run("xception", width=0.125, middle_repeats=1, resolution=71, classes=10)


@pytest.mark.slow
def test_onnx_qoperator_mobilenet(tmp_path):
    """A MobileNet exported to ONNX, quantised by onnxruntime's quantize_static in QOperator
    format (uint8 activations) and imported back: bit-exact with the golden model of the
    imported QGraph."""
    import sys
    sys.path.insert(0, str(harness.ROOT / "tests"))
    import onnx_models as M
    from hwgen.frontend.onnx import export_float, load
    from hwgen.models import build
    g = build("mobilenet", alpha=0.25, resolution=32, classes=3)
    export_float(g, str(tmp_path / "f.onnx"))
    M.quantize(tmp_path / "f.onnx", tmp_path / "q.onnx", fmt="qop", activation="uint8")
    qg = load(str(tmp_path / "q.onnx"))
    assert qg.io_dtype == "uint8"
    p = mapper.plan(qg, boards.get_board("ulx3s", "85F"))
    x = np.random.default_rng(3).integers(0, 256, (1,) + p.graph.input_shape).astype(np.uint8)
    r = simulate(qg, p, x, build_dir=BUILD)
    np.testing.assert_array_equal(r["logits"], r["golden"])


@pytest.mark.slow
def test_shufflenet():
    """ShuffleNet v1 g=3 0.5x at 64x64, 10 classes (group convs, channel shuffle on the
    write side, average-pool shortcut through the PoolUnit engine, concat, residual add)."""
    _run("shufflenet", groups=3, scale=0.5, resolution=64, classes=10)
