"""Residual adder (hwgen.hw.add) under cocotb: bit-exact with golden.ops.add (QLinearAdd)."""
import pytest

from hwgen.hw.add import Adder, AddParams
from rtl_tests import harness


def _run(params: AddParams, build: str, **cfg):
    config = {"lanes": params.lanes, "batches": 15, "beats": 300, "seed": 2, **cfg}
    harness.run(Adder(params), toplevel="adder", test_module="cocotb_add", config=config,
                build_name=build)


def test_add_2lanes():
    """2 lanes, 15 parameter draws x 300 beats, stalls on all three streams."""
    _run(AddParams(lanes=2, use_primitive=False), "add_l2")


@pytest.mark.slow
def test_add_injected_bug_fails():
    """Dropping the sticky bits of the first float32 rounding must be caught."""
    with pytest.raises((AssertionError, SystemExit)):
        _run(AddParams(lanes=1, use_primitive=False, _inject_bug=True), "add_bug",
             profiles=[3], batches=10, beats=400)
    log = harness.BUILD_ROOT / harness.simulator() / "add_bug" / "test.log"
    assert "mismatches" in log.read_text(errors="replace")


@pytest.mark.slow
@pytest.mark.parametrize("lanes", [1, 3])
def test_add_configs(lanes):
    _run(AddParams(lanes=lanes, use_primitive=False), f"add_l{lanes}", batches=40, beats=500,
         seed=11 + lanes)
