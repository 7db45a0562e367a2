"""The model zoo against the papers: MAC and parameter counts, layer shapes, structure,
seeded weights, the .npz weight format and option checking.

Published figures are rounded, so a count passes when it is within half a unit of the
published figure's last digit, or within 1% of it, whichever is wider
(:func:`assert_published`). Our own exact counts are pinned as integers besides.
Parameters are weights + biases (BN folded into the biases), which is what
``Graph.params()`` counts; the papers' figures are given to 2-3 digits, where biases
(< 1% of any network here) do not show, except ShuffleNet's 1.8M, which is weights only.
"""
import math

import numpy as np
import pytest

from hwgen import ir
from hwgen.models import MODELS, build, options, save_weights
from hwgen.models.common import same_padding
from hwgen.models.shufflenet import shufflenet_channels


def assert_published(value: float, published: float, decimals: int):
    """``value`` matches a figure published with ``decimals`` decimals (see module doc)."""
    tol = max(0.01 * published, 0.5 * 10.0 ** -decimals)
    assert abs(value - published) <= tol, f"{value} is not {published} (tolerance {tol})"


def weights_only(g: ir.Graph) -> int:
    return sum(n.weight.size for n in g.nodes if isinstance(n, (ir.Conv2d, ir.FullyConnected)))


# --- published counts ------------------------------------------------------------------

# (alpha, resolution, classes, published MMACs, published Mparams or None, exact MACs, exact params)
MOBILENET_COUNTS = [
    (1.0, 224, 1000, 569, 4.2, 568_740_352, 4_221_032),
    (0.75, 224, 1000, 325, 2.6, 325_400_448, 2_577_352),
    (0.5, 224, 1000, 149, 1.3, 149_497_088, 1_326_120),
    (0.25, 224, 1000, 41, 0.5, 41_030_272, 467_336),
    (1.0, 192, 1000, 418, 4.2, 418_121_728, 4_221_032),
    (1.0, 160, 1000, 290, 4.2, 290_675_200, 4_221_032),
    (1.0, 128, 1000, 186, 4.2, 186_400_768, 4_221_032),
    (0.5, 160, 1001, 76, None, 76_525_312, 1_326_633),     # TF-slim table
    (0.25, 128, 1001, 14, 0.47, 13_570_304, 467_593),      # TF-slim table
    (0.25, 96, 2, 7.49, 0.21, 7_489_664, 210_850),         # MLPerf Tiny visual wake words
]


@pytest.mark.parametrize("alpha,res,classes,mmacs,mparams,macs,params", MOBILENET_COUNTS,
                         ids=[f"{a}-{r}-{c}" for a, r, c, *_ in MOBILENET_COUNTS])
def test_mobilenet_counts(alpha, res, classes, mmacs, mparams, macs, params):
    g = build("mobilenet", alpha=alpha, resolution=res, classes=classes)
    assert_published(g.macs() / 1e6, mmacs, 2 if mmacs < 10 else 0)
    if mparams is not None:
        assert_published(g.params() / 1e6, mparams, len(str(mparams).split(".")[1]))
    assert (g.macs(), g.params()) == (macs, params)
    assert g.output_shape == (classes, 1, 1)


def test_mobilenet_table1_shapes():
    g = build("mobilenet")
    assert g.shapes["conv1"] == (32, 112, 112)
    expected = {2: (64, 112), 3: (128, 56), 4: (128, 56), 5: (256, 28), 6: (256, 28),
                7: (512, 14), 12: (512, 14), 13: (1024, 7), 14: (1024, 7)}
    for i, (c, s) in expected.items():
        assert g.shapes[f"pw{i}"] == (c, s, s)
        dw = g.node(f"dw{i}")
        assert dw.is_depthwise and dw.act is ir.Act.RELU6
    assert [n.name for n in g.nodes][-2:] == ["pool", "fc"]
    assert isinstance(g.node("fc"), ir.FullyConnected)


def test_mobilenet_channels_follow_tf_depth():
    # TF-slim: max(int(d * depth_multiplier), 8)
    g = build("mobilenet", alpha=0.3, resolution=64)
    assert g.shapes["conv1"][0] == max(int(32 * 0.3), 8) == 9
    assert g.shapes["pw2"][0] == int(64 * 0.3) == 19
    g = build("mobilenet", alpha=0.1, resolution=32)
    assert g.shapes["conv1"][0] == 8 and g.shapes["pw2"][0] == 8 and g.shapes["pw14"][0] == 102


def test_mobilenet_same_padding():
    assert same_padding(224, 3, 2) == (0, 1)
    assert same_padding(225, 3, 2) == (1, 1)
    assert same_padding(56, 3, 1) == (1, 1)
    g = build("mobilenet")
    assert g.node("conv1").padding == (0, 0, 1, 1)
    assert g.node("dw3").padding == (0, 0, 1, 1)      # 112 -> 56
    assert g.node("dw2").padding == (1, 1, 1, 1)
    g = build("mobilenet", resolution=225)
    assert g.node("conv1").padding == (1, 1, 1, 1) and g.shapes["conv1"] == (32, 113, 113)
    assert g.node("dw3").padding == (1, 1, 1, 1) and g.shapes["pw14"] == (1024, 8, 8)


def test_squeezenet_counts():
    v10, v11 = build("squeezenet", version="1.0"), build("squeezenet")
    assert v10.input_shape == (3, 227, 227) and v11.input_shape == (3, 224, 224)
    assert_published(v10.params() / 1e6, 1.25, 2)
    assert v10.params() == 1_248_424 and v11.params() == 1_235_496
    assert (v10.macs(), v11.macs()) == (832_667_936, 349_151_936)
    assert_published(v10.macs() / v11.macs(), 2.4, 1)     # "2.4x less computation"


def test_squeezenet_shapes():
    g = build("squeezenet", version="1.0")
    for t, shape in {"conv1": (96, 111, 111), "pool1": (96, 55, 55), "fire2.concat": (128, 55, 55),
                     "fire4.concat": (256, 55, 55), "pool4": (256, 27, 27),
                     "fire8.concat": (512, 27, 27), "pool8": (512, 13, 13),
                     "fire9.concat": (512, 13, 13), "conv10": (1000, 13, 13),
                     "pool10": (1000, 1, 1)}.items():
        assert g.shapes[t] == shape, t
    g = build("squeezenet", version="1.1")
    for t, shape in {"conv1": (64, 111, 111), "pool1": (64, 55, 55), "pool3": (128, 27, 27),
                     "pool5": (256, 13, 13), "fire9.concat": (512, 13, 13)}.items():
        assert g.shapes[t] == shape, t
    fire = g.node("fire6.expand3x3")
    assert fire.padding == (1, 1, 1, 1) and fire.act is ir.Act.RELU
    assert g.node("fire6.concat").inputs == ("fire6.expand1x1", "fire6.expand3x3")
    assert g.node("fire6.squeeze").out_channels == 48
    assert all(p.ceil_mode for p in g.nodes if isinstance(p, ir.MaxPool))
    assert g.node("conv10").act is ir.Act.RELU and g.outputs == ("pool10",)


def test_shufflenet_counts():
    g = build("shufflenet")
    assert_published(g.macs() / 1e6, 137.5, 1)              # direct count of the paper's 140M
    assert g.macs() == 137_460_672 and g.params() == 1_853_488
    assert_published(weights_only(g) / 1e6, 1.8, 1)
    for groups in (1, 2, 4, 8):
        assert abs(build("shufflenet", groups=groups).macs() / 140e6 - 1) < 0.10, groups
    half = build("shufflenet", scale=0.5)
    assert_published(half.macs() / 1e6, 38, 0)                # paper Table 2, 0.5x
    for groups in (1, 2, 3, 4, 8):
        assert 37e6 <= build("shufflenet", groups=groups, scale=0.5).macs() <= 43e6, groups


def test_shufflenet_channels():
    # Table 1 at 1x; the reference implementation's 0.5x models.
    table = {1: 144, 2: 200, 3: 240, 4: 272, 8: 384}
    for groups, c2 in table.items():
        assert shufflenet_channels(groups, 1.0) == (24, c2, 2 * c2, 4 * c2)
    assert shufflenet_channels(3, 0.5) == (12, 120, 240, 480)
    assert shufflenet_channels(8, 0.5) == (16, 192, 384, 768)
    for groups in table:
        for scale in (0.25, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0):
            c1, c2, c3, c4 = shufflenet_channels(groups, scale)
            assert c1 % groups == 0 and c2 % (4 * groups) == 0, (groups, scale)
        build("shufflenet", groups=groups, scale=0.3, resolution=32)   # shapes check out


def test_shufflenet_units():
    g = build("shufflenet", groups=3)
    assert g.shapes["pool1"] == (24, 56, 56)
    assert g.shapes["stage2.unit1.concat"] == (240, 28, 28)
    assert g.shapes["stage3.unit8.add"] == (480, 14, 14)
    assert g.shapes["stage4.unit4.add"] == (960, 7, 7)
    assert g.node("stage2.unit1.gconv1").groups == 1           # not grouped: 24 input channels
    assert g.node("stage3.unit1.gconv1").groups == 3
    u = "stage3.unit1"
    assert g.node(f"{u}.gconv1").out_channels == 120           # m = out / 4
    assert g.node(f"{u}.gconv2").out_channels == 480 - 240     # out - in
    assert g.node(f"{u}.dw").stride == (2, 2) and g.node(f"{u}.dw").act is ir.Act.NONE
    sc = g.node(f"{u}.shortcut")
    assert isinstance(sc, ir.AvgPool) and sc.count_include_pad and sc.padding == (1, 1, 1, 1)
    assert g.node(f"{u}.concat").inputs == (f"{u}.shortcut", f"{u}.gconv2")
    assert g.node(f"{u}.concat").act is ir.Act.RELU
    u = "stage3.unit2"
    assert g.node(f"{u}.shuffle").inputs == (f"{u}.gconv1",)
    assert g.node(f"{u}.dw").inputs == (f"{u}.shuffle",)
    assert g.node(f"{u}.add").inputs == (f"{u}.gconv2", "stage3.unit1.concat")
    assert g.node(f"{u}.add").act is ir.Act.RELU
    assert g.node(f"{u}.gconv2").act is ir.Act.NONE and g.node(f"{u}.gconv2").groups == 3
    assert g.node("stage2.unit1.shuffle").groups == 3                       # kept (reference)
    g1 = build("shufflenet", groups=1, resolution=32)
    assert not any(isinstance(n, ir.ChannelShuffle) for n in g1.nodes)
    assert g1.node("stage2.unit2.dw").inputs == ("stage2.unit2.gconv1",)


def test_xception_counts_and_shapes():
    g = build("xception")
    assert_published(g.params() / 1e6, 22.9, 1)
    assert g.params() == 22_851_736 and g.macs() == 8_357_403_496
    for t, shape in {"block1.conv1": (32, 149, 149), "block1.conv2": (64, 147, 147),
                     "block2.add": (128, 74, 74), "block3.add": (256, 37, 37),
                     "block4.add": (728, 19, 19), "block12.add": (728, 19, 19),
                     "block13.add": (1024, 10, 10), "block14.sep2.pw": (2048, 10, 10)}.items():
        assert g.shapes[t] == shape, t
    assert "block13.add_relu" not in [n.name for n in g.nodes]


def test_xception_relu_placement():
    """A block's ReLU'd sum feeds the next main path, the pre-ReLU sum the next residual."""
    g = build("xception", width=0.25, middle_repeats=3, resolution=71)
    for n in range(2, 8):
        add, relu = g.node(f"block{n}.add"), g.node(f"block{n}.add_relu")
        assert add.inputs == relu.inputs and (add.act, relu.act) == (ir.Act.NONE, ir.Act.RELU)
        assert g.node(f"block{n + 1}.sep1.dw").inputs == (f"block{n}.add_relu",)
    assert g.node("block2.sep1.dw").inputs == ("block1.conv2",)
    assert g.node("block2.residual").inputs == ("block1.conv2",)
    assert g.node("block3.residual").inputs == ("block2.add",)
    assert g.node("block5.add").inputs == ("block5.sep3.pw", "block4.add")   # identity shortcut
    assert g.node("block7.add").inputs == ("block7.sep3.pw", "block6.add")
    assert g.node("block8.residual").inputs == ("block7.add",)               # exit flow
    assert g.node("block9.sep1.dw").inputs == ("block8.add",)                # no ReLU there
    for n in g.nodes:
        if n.name.endswith(".dw"):
            assert n.is_depthwise and n.act is ir.Act.NONE and not n.bias.any()
    acts = {n.name: n.act for n in g.nodes if n.name.endswith(".pw")}
    assert acts["block5.sep1.pw"] is acts["block5.sep2.pw"] is ir.Act.RELU
    assert acts["block5.sep3.pw"] is ir.Act.NONE
    assert acts["block9.sep1.pw"] is acts["block9.sep2.pw"] is ir.Act.RELU


def test_xception_width_and_repeats():
    g = build("xception", width=0.1, middle_repeats=0, resolution=71)
    assert g.shapes["block1.conv1"][0] == 8 and g.shapes["block4.add"][0] == 72
    assert g.node("block5.residual").inputs == ("block4.add",)
    assert g.shapes["block6.sep2.pw"][0] == 204
    full, fewer = build("xception"), build("xception", middle_repeats=7)
    # one middle block: 3 separable convs 728 -> 728 at 19 x 19
    per_block = 3 * (728 * 9 + 728 * 728) * 19 * 19
    assert full.macs() - fewer.macs() == per_block


# --- common properties -----------------------------------------------------------------

SMALL = {
    "mobilenet": dict(alpha=0.25, resolution=64, classes=10),
    "squeezenet": dict(version="1.0", resolution=67, classes=10),
    "shufflenet": dict(groups=2, scale=0.25, resolution=64, classes=10),
    "xception": dict(width=0.125, middle_repeats=2, resolution=71, classes=10),
}


def test_registry():
    assert sorted(MODELS) == ["mobilenet", "shufflenet", "squeezenet", "xception"]
    assert options("mobilenet") == dict(alpha=1.0, resolution=224, classes=1000, seed=0, weights=None)
    assert options("squeezenet") == dict(version="1.1", resolution=None, classes=1000, seed=0,
                                         weights=None)
    assert options("shufflenet") == dict(groups=3, scale=1.0, resolution=224, classes=1000, seed=0,
                                         weights=None)
    assert options("xception") == dict(width=1.0, middle_repeats=8, resolution=299, classes=1000,
                                       seed=0, weights=None)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_default_io(name):
    g = build(name)
    r = {"mobilenet": 224, "squeezenet": 224, "shufflenet": 224, "xception": 299}[name]
    assert g.inputs == {"input": (3, r, r)}
    assert len(g.outputs) == 1 and g.output_shape == (1000, 1, 1)
    names = [n.name for n in g.nodes]
    assert len(set(names)) == len(names)
    assert all(n.weight.dtype == np.float32 for n in g.nodes if hasattr(n, "weight"))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_seeded_weights(name):
    a, b, c = build(name, **SMALL[name]), build(name, **SMALL[name]), build(name, seed=1, **SMALL[name])
    assert a.output_shape == (10, 1, 1)
    weighted = [n for n in a.nodes if isinstance(n, (ir.Conv2d, ir.FullyConnected))]
    for n in weighted:
        np.testing.assert_array_equal(n.weight, b.node(n.name).weight)
        np.testing.assert_array_equal(n.bias, b.node(n.name).bias)
        assert not np.array_equal(n.weight, c.node(n.name).weight), n.name


@pytest.mark.parametrize("name", sorted(MODELS))
def test_npz_round_trip(name, tmp_path):
    g = build(name, seed=3, **SMALL[name])
    path = tmp_path / "w.npz"
    save_weights(g, path)
    h = build(name, weights=path, **SMALL[name])          # seed 0: the file wins
    h2 = build(name, weights=str(path), seed=5, **SMALL[name])
    for n in g.nodes:
        if isinstance(n, (ir.Conv2d, ir.FullyConnected)):
            for other in (h, h2):
                np.testing.assert_array_equal(n.weight, other.node(n.name).weight)
                np.testing.assert_array_equal(n.bias, other.node(n.name).bias)
    assert h.macs() == g.macs() and h.params() == g.params()


def _write(path, arrays):
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def test_npz_errors(tmp_path):
    opts = SMALL["mobilenet"]
    g = build("mobilenet", **opts)
    arrays = {}
    for n in g.nodes:
        if isinstance(n, (ir.Conv2d, ir.FullyConnected)):
            arrays[f"{n.name}.weight"], arrays[f"{n.name}.bias"] = n.weight, n.bias
    p = tmp_path / "w.npz"

    missing = dict(arrays)
    del missing["pw5.bias"]
    _write(p, missing)
    with pytest.raises(ir.IRError, match=r"node 'pw5'.*'pw5\.bias'.*\(64,\)"):
        build("mobilenet", weights=p, **opts)

    wrong = dict(arrays, **{"dw3.weight": np.zeros((16, 1, 5, 5), np.float32)})
    _write(p, wrong)
    with pytest.raises(ir.IRError, match=r"node 'dw3'.*\(16, 1, 5, 5\), expected \(16, 1, 3, 3\)"):
        build("mobilenet", weights=p, **opts)

    _write(p, dict(arrays, **{"extra.weight": np.zeros(3)}))
    with pytest.raises(ValueError, match="extra.weight"):
        build("mobilenet", weights=p, **opts)

    with pytest.raises(ir.IRError, match="node 'fc'"):
        build("mobilenet", weights=tmp_path / "w.npz", **dict(opts, classes=11))

    with pytest.raises(ValueError, match="does not exist"):
        build("mobilenet", weights=tmp_path / "nope.npz", **opts)
    (tmp_path / "bad.npz").write_text("not a zip")
    with pytest.raises(ValueError, match="not a readable .npz"):
        build("mobilenet", weights=tmp_path / "bad.npz", **opts)
    np.save(tmp_path / "one.npy", np.zeros(3))
    with pytest.raises(ValueError, match="single .npy array"):
        build("mobilenet", weights=tmp_path / "one.npy", **opts)
    _write(p, dict(arrays, **{"fc.bias": np.full(10, np.nan, np.float32)}))
    with pytest.raises(ir.IRError, match="node 'fc'.*non-finite"):
        build("mobilenet", weights=p, **opts)


BAD_OPTIONS = [
    ("mobilenet", "alpha", 0), ("mobilenet", "alpha", 1.5), ("mobilenet", "alpha", "1"),
    ("mobilenet", "alpha", math.nan), ("mobilenet", "resolution", 16),
    ("mobilenet", "resolution", 224.0), ("mobilenet", "classes", 0), ("mobilenet", "seed", -1),
    ("mobilenet", "weights", 3), ("squeezenet", "version", "1.2"), ("squeezenet", "version", 1),
    ("squeezenet", "resolution", 24), ("shufflenet", "groups", 5), ("shufflenet", "groups", True),
    ("shufflenet", "scale", 0.0), ("shufflenet", "scale", 3), ("shufflenet", "resolution", 31),
    ("xception", "width", -0.5), ("xception", "middle_repeats", -1),
    ("xception", "middle_repeats", 2.5), ("xception", "resolution", 70),
    ("xception", "classes", True),
]


@pytest.mark.parametrize("name,option,value", BAD_OPTIONS,
                         ids=[f"{n}-{o}-{v!r}" for n, o, v in BAD_OPTIONS])
def test_bad_options(name, option, value):
    with pytest.raises(ValueError) as e:
        build(name, **{option: value})
    msg = str(e.value)
    assert option in msg and repr(value) in msg and "allowed" in msg, msg


def test_bad_names():
    with pytest.raises(ValueError, match="unknown model 'resnet'.*mobilenet"):
        build("resnet")
    with pytest.raises(ValueError, match="unknown option 'depth'.*alpha"):
        build("mobilenet", depth=2)
    assert build("squeezenet", version=1.0).input_shape == (3, 227, 227)


# --- random weights keep activations in range --------------------------------------------

def float_forward(g: ir.Graph, x: np.ndarray) -> dict[str, np.ndarray]:
    """Float64 reference of a graph on one image (C, H, W): every tensor by name."""
    env = {g.input_name: np.asarray(x, np.float64)}
    for n in g.nodes:
        ins = [env[t] for t in n.inputs]
        oc, oh, ow = g.shapes[n.output]
        if isinstance(n, (ir.Conv2d, ir.MaxPool, ir.AvgPool)):
            a = ins[0]
            c, h, w = a.shape
            t, l, b, r = n.padding
            (kh, kw), (sh, sw) = n.kernel, n.stride
            eb = max(0, (oh - 1) * sh + kh - (h + t + b))     # ceil-mode overhang
            er = max(0, (ow - 1) * sw + kw - (w + l + r))
            fill = -np.inf if isinstance(n, ir.MaxPool) else 0.0
            xp = np.pad(a, ((0, 0), (t, b + eb), (l, r + er)), constant_values=fill)

            def windows(arr):
                v = np.lib.stride_tricks.sliding_window_view(arr, (kh, kw), axis=(1, 2))
                return v[:, : (oh - 1) * sh + 1: sh, : (ow - 1) * sw + 1: sw]
            win = windows(xp)                                    # (C, oh, ow, kh, kw)
            if isinstance(n, ir.Conv2d):
                gr = n.groups
                wt = n.weight.astype(np.float64).reshape(gr, oc // gr, c // gr, kh, kw)
                y = np.einsum("gchwij,gocij->gohw", win.reshape(gr, c // gr, oh, ow, kh, kw), wt,
                              optimize=True).reshape(oc, oh, ow)
                y = n.act.apply(y + n.bias.reshape(-1, 1, 1))
            elif isinstance(n, ir.MaxPool):
                y = win.max(axis=(3, 4))
            else:
                inside = np.pad(np.ones((1, h, w)), ((0, 0), (t, b + eb), (l, r + er)))
                if n.count_include_pad:
                    inside[:, : h + t + b, : w + l + r] = 1.0
                y = win.sum(axis=(3, 4)) / windows(inside).sum(axis=(3, 4))
        elif isinstance(n, ir.FullyConnected):
            y = n.act.apply(n.weight @ ins[0].reshape(-1) + n.bias).reshape(-1, 1, 1)
        elif isinstance(n, ir.GlobalAvgPool):
            y = ins[0].mean(axis=(1, 2), keepdims=True)
        elif isinstance(n, (ir.Add, ir.Concat)):
            y = n.act.apply(ins[0] + ins[1] if isinstance(n, ir.Add) else np.concatenate(ins))
        elif isinstance(n, ir.ChannelShuffle):
            y = ins[0][n.permutation(ins[0].shape[0])]
        else:
            raise NotImplementedError(n.op)
        assert y.shape == (oc, oh, ow), n.name
        env[n.output] = y
    return env


RANGE_CASES = {
    "mobilenet": dict(alpha=0.5, resolution=96),
    "squeezenet": dict(version="1.1"),   # 13 x 13 before conv10, as in the release
    "shufflenet": dict(groups=8, scale=0.5, resolution=64),
    "xception": dict(width=0.125, middle_repeats=8, resolution=95),
}


@pytest.mark.parametrize("name", sorted(RANGE_CASES))
def test_activations_stay_in_range(name):
    """Every tensor's RMS stays within [0.1, 10] on an input uniform in [-1, 1] and the
    logits spread over the classes with a standard deviation in [0.1, 10] (measured 0.3-1.2:
    nothing vanishes or explodes)."""
    g = build(name, **RANGE_CASES[name])
    x = np.random.default_rng(7).uniform(-1, 1, g.input_shape)    # the zoo's input range
    env = float_forward(g, x)
    rms = {t: float(np.sqrt(np.mean(v ** 2))) for t, v in env.items()}
    bad = {t: round(v, 3) for t, v in rms.items() if not 0.1 <= v <= 10}
    assert not bad, bad
    out = env[g.outputs[0]].ravel()
    assert 0.1 <= out.std() <= 10
    # distinct logits; SqueezeNet's conv10 has a ReLU: with random weights 10-20% of the
    # classes are 0 there
    assert np.unique(out).size >= (0.75 if name == "squeezenet" else 1.0) * out.size


def test_float_forward_reference():
    """The test's float reference on hand-computed cases (ceil-mode max pool, avg pool with and
    without padding in the count, group conv, shuffle)."""
    x = np.arange(25, dtype=np.float64).reshape(1, 5, 5)
    nodes = (ir.MaxPool(name="mp", inputs=("input",), output="mp", kernel=3, stride=2,
                        ceil_mode=True),
             ir.AvgPool(name="ap", inputs=("input",), output="ap", kernel=3, stride=2, padding=1,
                        count_include_pad=True),
             ir.AvgPool(name="ax", inputs=("input",), output="ax", kernel=3, stride=2, padding=1))
    g = ir.Graph("t", {"input": (1, 5, 5)}, ("mp",), nodes)
    env = float_forward(g, x)
    np.testing.assert_array_equal(env["mp"][0], [[12, 14], [22, 24]])
    assert env["ap"][0, 0, 0] == (0 + 1 + 5 + 6) / 9 and env["ax"][0, 0, 0] == (0 + 1 + 5 + 6) / 4
    assert env["ap"][0, 1, 1] == env["ax"][0, 1, 1] == np.mean(x[0, 1:4, 1:4])
    w = np.arange(8, dtype=np.float32).reshape(4, 2, 1, 1)
    conv = ir.Conv2d(name="c", inputs=("input",), output="c", out_channels=4, kernel=1, groups=2,
                     weight=w, bias=np.zeros(4, np.float32))
    sh = ir.ChannelShuffle(name="s", inputs=("c",), output="s", groups=2)
    g = ir.Graph("t", {"input": (4, 1, 1)}, ("s",), (conv, sh))
    env = float_forward(g, np.array([1.0, 2, 3, 4]).reshape(4, 1, 1))
    c = [0 * 1 + 1 * 2, 2 * 1 + 3 * 2, 4 * 3 + 5 * 4, 6 * 3 + 7 * 4]
    np.testing.assert_array_equal(env["c"].ravel(), c)
    np.testing.assert_array_equal(env["s"].ravel(), [c[0], c[2], c[1], c[3]])
