import numpy as np
import pytest

from hwgen import ir


def conv(name, inp, out, cin, cout, k=3, s=1, p=1, g=1, act=ir.Act.RELU):
    return ir.Conv2d(name=name, inputs=(inp,), output=out, out_channels=cout, kernel=k, stride=s,
                     padding=p, groups=g, act=act,
                     weight=np.zeros((cout, cin // g, k, k), np.float32), bias=np.zeros(cout, np.float32))


def test_shapes_and_counts():
    g = ir.Graph("t", {"input": (3, 9, 7)}, ("y",), (
        conv("c1", "input", "a", 3, 12, s=2),
        ir.ChannelShuffle(name="sh", inputs=("a",), output="b", groups=3),
        conv("dw", "b", "c", 12, 12, g=12, act=ir.Act.NONE),
        ir.Add(name="add", inputs=("b", "c"), output="d", act=ir.Act.RELU),
        ir.MaxPool(name="mp", inputs=("d",), output="e", kernel=3, stride=2, ceil_mode=True),
        ir.AvgPool(name="ap", inputs=("d",), output="f", kernel=3, stride=2, ceil_mode=True),
        ir.Concat(name="cat", inputs=("e", "f"), output="h"),
        ir.ChannelSlice(name="sl", inputs=("h",), output="i", start=4, stop=20),
        ir.GlobalAvgPool(name="gap", inputs=("i",), output="j"),
        ir.FullyConnected(name="fc", inputs=("j",), output="y", out_features=5,
                          weight=np.zeros((5, 16), np.float32), bias=np.zeros(5, np.float32)),
    ))
    assert g.shapes["a"] == (12, 5, 4)
    assert g.shapes["e"] == (12, 2, 2)   # ceil((5-3)/2)+1 = 2, ceil((4-3)/2)+1 = 2
    assert g.shapes["h"] == (24, 2, 2)
    assert g.shapes["y"] == (5, 1, 1)
    assert g.node("dw").is_depthwise
    assert g.node_macs(g.node("c1")) == 12 * 5 * 4 * 27
    assert g.node_macs(g.node("dw")) == 12 * 5 * 4 * 9
    assert g.params() == 12 * 27 + 12 + 12 * 9 + 12 + 5 * 16 + 5


def test_shuffle_permutation_matches_reshape_transpose():
    c, gr = 12, 3
    perm = ir.ChannelShuffle(name="s", inputs=("x",), output="y", groups=gr).permutation(c)
    x = np.arange(c)
    np.testing.assert_array_equal(x[perm], x.reshape(gr, c // gr).T.reshape(-1))


@pytest.mark.parametrize("size,k,s,pb,pa,ceil,expect", [
    (112, 3, 2, 0, 0, True, 56), (113, 3, 2, 0, 0, True, 56), (55, 3, 2, 0, 0, True, 27),
    (56, 3, 2, 0, 0, False, 27), (7, 3, 2, 1, 1, False, 4), (1, 1, 1, 0, 0, False, 1),
    (6, 3, 2, 1, 1, True, 4), (5, 3, 2, 1, 1, True, 3),
])
def test_pool_out_size(size, k, s, pb, pa, ceil, expect):
    assert ir.pool_out_size(size, k, s, pb, pa, ceil) == expect


def test_errors_name_the_node():
    with pytest.raises(ir.IRError, match="node 'c2'.*input channels"):
        ir.Graph("t", {"input": (3, 8, 8)}, ("b",), (
            conv("c1", "input", "a", 3, 8), conv("c2", "a", "b", 4, 8)))
    with pytest.raises(ir.IRError, match="node 'c1'.*'nope'"):
        ir.Graph("t", {"input": (3, 8, 8)}, ("a",), (conv("c1", "nope", "a", 3, 8),))
    with pytest.raises(ir.IRError, match="node 'add'.*differ"):
        ir.Graph("t", {"input": (3, 8, 8)}, ("b",), (
            conv("c1", "input", "a", 3, 8, s=2),
            ir.Add(name="add", inputs=("input", "a"), output="b")))
    with pytest.raises(ir.IRError, match="not divisible by shuffle groups"):
        ir.Graph("t", {"input": (10, 4, 4)}, ("y",), (
            ir.ChannelShuffle(name="sh", inputs=("input",), output="y", groups=3),))
    with pytest.raises(ir.IRError, match="duplicate"):
        ir.Graph("t", {"input": (3, 8, 8)}, ("b",), (
            conv("c1", "input", "a", 3, 8), conv("c1", "a", "b", 8, 8)))


def test_immutable_weights_and_qparams():
    c = conv("c1", "input", "a", 3, 8)
    with pytest.raises(ValueError):
        c.weight[0, 0, 0, 0] = 1.0
    with pytest.raises(ValueError, match="zero point"):
        ir.QParams(0.1, 200)
    with pytest.raises(ValueError, match="scale"):
        ir.QParams(0.0, 0)


def test_clamp_range():
    q = ir.QParams(6 / 255, -128)
    assert ir.clamp_range(ir.Act.RELU6, q) == (-128, 127)
    assert ir.clamp_range(ir.Act.RELU, ir.QParams(0.1, -10)) == (-10, 127)
    assert ir.clamp_range(ir.Act.RELU6, ir.QParams(0.1, -10)) == (-10, 50)
    assert ir.clamp_range(ir.Act.NONE, ir.QParams(0.1, 3)) == (-128, 127)
