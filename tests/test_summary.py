"""hwgen.summary: per-layer figures and the text table."""
import json

import numpy as np
import pytest

from hwgen import ir
from hwgen.models import build
from hwgen.summary import format_summary, si, summarize


@pytest.fixture(scope="module")
def vww():
    return build("mobilenet", alpha=0.25, resolution=96, classes=2)


def test_totals(vww):
    d = summarize(vww)
    assert d["model"] == vww.name
    assert d["input"] == [3, 96, 96] and d["output"] == [2, 1, 1] and d["input_name"] == "input"
    assert (d["macs"], d["params"]) == (vww.macs(), vww.params()) == (7_489_664, 210_850)
    assert len(d["layers"]) == len(vww.nodes) == 29
    weights = sum(n.weight.size for n in vww.nodes if hasattr(n, "weight"))
    biases = sum(n.bias.size for n in vww.nodes if hasattr(n, "bias"))
    assert d["weight_bytes"] == weights + 4 * biases
    assert d["activation_bytes"] == sum(int(np.prod(s)) for s in vww.shapes.values())
    assert d["max_tensor_bytes"] == 16 * 48 * 48
    assert json.loads(json.dumps(d)) == d


def test_layers(vww):
    d = summarize(vww)
    conv1, dw3, pool, fc = (d["layers"][i] for i in (0, 3, 27, 28))
    assert conv1 == {"name": "conv1", "op": "Conv2d", "describe": "conv 3x3/2 relu6",
                     "inputs": ["input"], "in_shapes": [[3, 96, 96]], "out_shape": [8, 48, 48],
                     "params": 8 * 27 + 8, "macs": 8 * 48 * 48 * 27,
                     "activation_bytes": 8 * 48 * 48, "weight_bytes": 8 * 27 + 4 * 8}
    assert dw3["describe"] == "dw 3x3/2 relu6" and dw3["macs"] == 16 * 24 * 24 * 9
    assert (pool["op"], pool["params"], pool["macs"], pool["weight_bytes"]) == ("GlobalAvgPool", 0, 0, 0)
    assert pool["activation_bytes"] == 256
    assert (fc["macs"], fc["params"], fc["weight_bytes"]) == (512, 514, 512 + 8)


def test_multi_input_layers_and_peak():
    """A branch: x -> a, x -> b, concat(a, b); peak is x + a + b alive while b is computed."""
    w = np.ones((4, 2, 1, 1), np.float32)
    z = np.zeros(4, np.float32)
    nodes = (ir.Conv2d(name="a", inputs=("input",), output="a", out_channels=4, kernel=1,
                       weight=w, bias=z),
             ir.Conv2d(name="b", inputs=("input",), output="b", out_channels=4, kernel=1,
                       weight=w, bias=z),
             ir.Concat(name="cat", inputs=("a", "b"), output="cat"),
             ir.MaxPool(name="mp", inputs=("cat",), output="mp", kernel=2, stride=2))
    g = ir.Graph("branch", {"input": (2, 4, 4)}, ("mp",), nodes)
    d = summarize(g)
    assert d["layers"][2]["in_shapes"] == [[4, 4, 4], [4, 4, 4]]
    assert d["activation_bytes"] == 32 + 64 + 64 + 128 + 32
    # while b runs: input (32) + a (64) + b (64); while cat runs: a + b + cat = 256
    assert d["peak_live_bytes"] == 256
    text = format_summary(d)
    assert "4x4x4 + 4x4x4" in text


def test_format(vww):
    text = format_summary(summarize(vww))
    lines = text.splitlines()
    assert lines[0] == "model mobilenet_v1_0.25_96: input 3x96x96, output 2x1x1"
    table = lines[1:-1]
    assert len({len(l) for l in table}) == 1, "columns are not aligned"
    assert len(table) == 1 + 1 + 29 + 1 + 1
    total = table[-1]
    assert "total" in total and "7.49M" in total and "211K" in total
    for name in ("conv1", "dw14", "pw14", "pool", "fc"):
        assert any(l.split()[1] == name for l in table[2:-2])
    assert "MACs 7.49M (7,489,664)" in lines[-1]


@pytest.mark.parametrize("n,text", [(0, "0"), (999, "999"), (1000, "1.00K"), (7_489_664, "7.49M"),
                                    (13_570_304, "13.6M"), (568_740_352, "569M"),
                                    (999_499, "999K"), (999_500, "1.00M"),
                                    (8_357_403_496, "8.36G")])
def test_si(n, text):
    assert si(n) == text


def test_summary_of_every_zoo_model():
    for name, opts in (("squeezenet", {}), ("shufflenet", {"groups": 8, "scale": 0.5}),
                       ("xception", {"width": 0.25, "middle_repeats": 1, "resolution": 71})):
        g = build(name, **opts)
        d = summarize(g)
        assert d["macs"] == g.macs() and [l["name"] for l in d["layers"]] == [n.name for n in g.nodes]
        assert format_summary(d).count("\n") == len(g.nodes) + 6
