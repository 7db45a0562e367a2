"""Concat buffer with the channel-shuffle permuter (hwgen/hw/concat.py + shuffle.py), Verilator.

One build per layout serves both features: every draw is a random two-producer concat,
shuffled or not, compared bit-exact with hwgen.golden.ops.concat / channel_shuffle, with
zero extra cycles proven by counting (valid cycles == writes) when producers take turns.
"""
import pytest

from hwgen.hw.concat import ConcatBuffer, ConcatParams
from hwgen.hw.shuffle import ShuffleParams
from rtl_tests import harness

FAST = dict(max_channels=64, max_pixels=64, depth=4096, max_groups=8, layout="hwc")


def _run(geom, *, draws, seed, concurrent=True, wrong_expect=False, tag="fast"):
    params = ConcatParams(ShuffleParams(**geom), ports=2)
    harness.run(ConcatBuffer(params), toplevel="concat_buffer", test_module="cocotb_concat",
                config=dict(geom, seed=seed, draws=draws, p_valid=0.7, concurrent=concurrent,
                            wrong_expect=wrong_expect),
                build_name=f"concat_{geom['layout']}_{geom['max_channels']}_{tag}")


def test_concat_shuffle_buffer():
    _run(FAST, draws=12, seed=1)


def test_concat_bench_catches_a_wrong_value():
    """The bench is not vacuous: one flipped expected bit must fail (same build)."""
    # harness.run raises AssertionError; under pytest cocotb_tools' runner itself exits
    # with SystemExit(1) on a failed cocotb test first, so accept either
    with pytest.raises((AssertionError, SystemExit)):
        _run(FAST, draws=1, seed=2, concurrent=False, wrong_expect=True)


def test_concat_params_errors():
    p = ConcatParams(ShuffleParams(**FAST), ports=2)
    assert p.offsets([40, 24]) == [0, 40]
    with pytest.raises(ValueError, match="max_channels"):
        p.offsets([40, 40])
    with pytest.raises(ValueError, match="ports"):
        p.offsets([1, 2, 3])
    with pytest.raises(ValueError, match="ports"):
        ConcatParams(ShuffleParams(**FAST), ports=0)


@pytest.mark.slow
@pytest.mark.parametrize("geom", [
    dict(max_channels=64, max_pixels=64, depth=4096, max_groups=8, layout="chw"),
    dict(max_channels=200, max_pixels=16, depth=8192, max_groups=4, layout="hwc"),
], ids=["chw", "hwc-wide"])
def test_concat_shuffle_buffer_slow(geom):
    _run(geom, draws=30, seed=7, tag="slow")
