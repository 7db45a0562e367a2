"""Pure-Python parts of the whole-network simulation (no simulator build): the memory
initialiser extraction and the sequencer's descriptor table."""
import numpy as np
import pytest
from amaranth import Module, unsigned
from amaranth.back import verilog
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

import boards
from hwgen import flow, mapper
from hwgen.hw import layer_io
from hwgen.mapper import program as prog
from hwgen.sim import externalize_inits


class _Mems(wiring.Component):
    addr: In(4)
    a: Out(16)
    b: Out(8)

    def elaborate(self, platform):
        m = Module()
        m.submodules.wmem = wm = Memory(shape=unsigned(16), depth=10, init=[0, 0x1234, 5])
        m.submodules.zmem = zm = Memory(shape=unsigned(8), depth=12, init=[])
        ra, rb = wm.read_port(), zm.read_port()
        w = zm.write_port()
        m.d.comb += [ra.addr.eq(self.addr), rb.addr.eq(self.addr), self.a.eq(ra.data),
                     self.b.eq(rb.data), w.addr.eq(self.addr), w.data.eq(self.addr),
                     w.en.eq(1)]
        return m


def test_externalize_inits():
    text = verilog.convert(_Mems(), name="mems")
    out, files = externalize_inits(text)
    assert len(files) == 1                       # the all-zero memory has no file
    (name, content), = files.items()
    assert name.startswith("wmem")
    assert content.split() == ["0", "1234", "5"] + ["0"] * 7
    assert f'$readmemh("{name}", wmem)' in out
    assert "wmem[1] =" not in out and "zmem[0] =" not in out
    assert "reg [7:0] zmem [11:0];" in out


@pytest.fixture(scope="module")
def mobilenet_plan():
    qg = flow.quantized("mobilenet", alpha=0.25, resolution=32, classes=3)
    return mapper.plan(qg, boards.get_board("ulx3s", "85F"))


def test_layer_descriptors(mobilenet_plan):
    p = mobilenet_plan
    cols = p.engines.sa_cols
    ds = layer_io.layer_descriptors(p, cols)
    pd = prog.descriptors(p)
    assert len(ds) == len(pd)
    for l, d, lp in zip(ds, pd, p.layers):
        f = l.fields
        assert l.name == lp.name
        assert f["out_c"] == d.out_c and f["out_addr"] == d.out_addr
        assert f["cout_g"] * f["groups"] == d.out_c
        assert f["beats"] == f["pixels"] * f["groups"] * -(-f["cout_g"] // cols)
        if lp.kind == "dw":
            assert (f["mode"], f["groups"], f["k"]) == (layer_io.MODE_DW, d.in_c, d.kh * d.kw)
        elif lp.kind == "gap":
            assert f["mode"] == layer_io.MODE_ONES and f["bias_zero"] and not f["ch_step"]
            assert f["k"] == d.in_h * d.in_w and f["pixels"] == 1
        elif lp.kind == "fc":
            assert f["k"] == d.in_c * d.in_h * d.in_w and f["pixels"] == 1
        else:
            assert f["k"] == d.kh * d.kw * d.in_c // d.groups
            assert f["w_base"] * cols + 64 == d.w_addr


def test_weight_stores_depthwise_order(mobilenet_plan):
    """The depthwise tap memory holds w[c, ky, kx] channel-major, from the weight image."""
    p = mobilenet_plan
    _, dw, base, _, _ = layer_io.weight_stores(p, p.engines.sa_cols)
    lp = next(l for l in p.layers if l.kind == "dw")
    w = p.qg.weights[lp.name].weight
    c = w.shape[0]
    got = np.array(dw[base[lp.name]:base[lp.name] + c * 9], np.int8).reshape(c, 3, 3)
    np.testing.assert_array_equal(got, w[:, 0])


def test_unsupported_layer_named(mobilenet_plan):
    """A layer kind the accelerator does not run (a copy) is refused naming the layer."""
    import dataclasses
    p = mobilenet_plan
    layers = list(p.layers)
    layers[2] = dataclasses.replace(layers[2], kind="copy", engine="copy")
    bad = dataclasses.replace(p, layers=tuple(layers))
    with pytest.raises(NotImplementedError, match=layers[2].name):
        layer_io.layer_descriptors(bad, p.engines.sa_cols)


def test_avgpool_configs():
    """ShuffleNet's stride-2 shortcut average pools get pool-unit register values; other
    layers none."""
    qg = flow.quantized("shufflenet", groups=3, scale=0.5, resolution=64, classes=10)
    p = mapper.plan(qg, boards.get_board("ulx3s", "85F"))
    cfgs, mw, mh = layer_io.avgpool_configs(p)
    ds = prog.descriptors(p)
    assert len(cfgs) == len(ds)
    avg = [(c, d) for c, d in zip(cfgs, ds) if c is not None]
    assert len(avg) == 3
    for c, d in avg:
        assert (c["out_h"], c["out_w"]) == (d.out_h, d.out_w) and c["stride2"] == 1
    assert mw >= 16 and mh >= 16
