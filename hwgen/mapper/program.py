"""The layer program and the weight image: what the sequencer runs and what its memories hold.

``program.bin`` is a header, one fixed-size descriptor per scheduled layer (a non-free
Concat has one per input), and a CRC32 trailer. ``weights.bin`` is a header, section A
(int8 weights in each engine's stream order) and section B (per-channel parameters and
per-op constants), and a CRC32 trailer; every address in a descriptor is a byte offset into
weights.bin (or into the activation arena). firmware/README.md documents both field by
field; :data:`HEADER`, :data:`DESCRIPTOR` and :data:`WEIGHTS_HEADER` are the struct formats.

:func:`simulate` executes a program the way the sequencer does (one layer at a time,
every tensor read from and written to the flat activation arena at the planned addresses,
remaps free) with the golden integer ops: it is the buffer plan's proof, and the
reference the hardware sequencer is checked against.
"""
from __future__ import annotations

import json
import os
import struct
import zlib
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from .. import ir
from ..golden import arith
from .plan import WEIGHTS_HEADER_BYTES, WEIGHTS_SECTION_A, Plan

__all__ = ["Descriptor", "Program", "ProgramFormatError", "descriptors", "encode_program",
           "decode_program", "weight_image", "decode_weight_image", "layers_json",
           "write_build_files", "simulate", "OPS", "ENGINES", "FLAGS", "VERSION",
           "HEADER", "DESCRIPTOR", "WEIGHTS_HEADER"]

VERSION = 1
PROGRAM_MAGIC = b"HWGP"
WEIGHTS_MAGIC = b"HWGW"

#: program.bin header (64 bytes, little-endian).
HEADER = struct.Struct("<4sHHHHIII" "IHHHH" "IHHHH" "8B" "8x")
#: One descriptor (96 bytes, little-endian).
DESCRIPTOR = struct.Struct(
    "<BBBB" "BBBB" "BBBB" "HH"          # op engine flags n_inputs | kh kw sh sw | pads | groups bands
    "HHHHHH"                             # in_c in_h in_w out_c out_h out_w
    "IHH" "IHH"                          # in0 addr pitch channels, in1 addr pitch channels
    "IHH" "HHHH"                         # out addr pitch pre, shuffle groups/channels, post, node
    "IIIIII"                             # w addr/bytes, ch addr/bytes, const addr/bytes
    "bbbbbBH"                            # x_zp in1_zp y_zp lo hi part reserved
    "I")                                 # estimated cycles
#: weights.bin header (32 bytes, little-endian).
WEIGHTS_HEADER = struct.Struct("<4sHHHHIIIII")

OPS = {"Conv2d": 1, "Conv2dIm2col": 2, "FullyConnected": 3, "DepthwiseConv2d": 4,
       "MaxPool": 5, "AvgPool": 6, "GlobalAvgPool": 7, "Add": 8, "Concat": 9,
       "ChannelShuffle": 10, "ChannelSlice": 11}
ENGINES = {"remap": 0, "systolic": 1, "im2col+systolic": 1, "dwconv": 2, "pool": 3, "add": 4,
           "copy": 5}
FLAGS = {"external": 1, "ceil_mode": 2, "count_include_pad": 4, "remap": 8, "table": 16,
         "uint8": 32, "im2col": 64}


class ProgramFormatError(ValueError):
    """A program.bin / weights.bin that is truncated, corrupted or of another version."""


@dataclass(frozen=True)
class Descriptor:
    """One layer descriptor (fields in :data:`DESCRIPTOR` order; firmware/README.md)."""
    op: int
    engine: int
    flags: int
    n_inputs: int
    kh: int
    kw: int
    sh: int
    sw: int
    pad_top: int
    pad_left: int
    pad_bottom: int
    pad_right: int
    groups: int
    bands: int
    in_c: int
    in_h: int
    in_w: int
    out_c: int
    out_h: int
    out_w: int
    in0_addr: int
    in0_pitch: int
    in0_c: int
    in1_addr: int
    in1_pitch: int
    in1_c: int
    out_addr: int
    out_pitch: int
    out_pre: int
    shuffle_groups: int
    shuffle_channels: int
    out_post: int
    node: int
    w_addr: int
    w_bytes: int
    ch_addr: int
    ch_bytes: int
    const_addr: int
    const_bytes: int
    x_zp: int
    in1_zp: int
    y_zp: int
    lo: int
    hi: int
    part: int
    reserved: int
    cycles: int

    def pack(self) -> bytes:
        return DESCRIPTOR.pack(*(getattr(self, f.name) for f in fields(self)))


@dataclass(frozen=True)
class Program:
    """A decoded program.bin."""
    version: int
    arena_bytes: int
    weights_bytes: int
    weights_crc32: int
    input: dict
    output: dict
    engines: dict
    descriptors: tuple[Descriptor, ...]


def _u16(v: int, what: str) -> int:
    if not 0 <= v < 1 << 16:
        raise ValueError(f"{what} = {v} does not fit the 16-bit descriptor field")
    return v


# --- descriptors --------------------------------------------------------------------------------

def _op_code(plan: Plan, node: ir.Node, kind: str) -> int:
    if kind == "gap":                 # an AvgPool over the whole input runs as the global one
        return OPS["GlobalAvgPool"]
    if isinstance(node, ir.Conv2d):
        return OPS["DepthwiseConv2d"] if kind == "dw" else (
            OPS["Conv2dIm2col"] if kind == "im2col" else OPS["Conv2d"])
    return OPS[node.op]


def _tables(plan: Plan, node: ir.Node) -> list[bool]:
    """Which inputs of a copy / max-pool go through a 256-entry rescale table."""
    qg = plan.qg
    if qg is None:
        return [False] * len(node.inputs)
    q = qg.act_q
    return [not (np.float32(q[t].scale) == np.float32(q[node.output].scale)
                 and q[t].zero_point == q[node.output].zero_point) for t in node.inputs]


def descriptors(plan: Plan) -> tuple[Descriptor, ...]:
    """The program's descriptors, in execution order."""
    g = plan.graph
    qg = plan.qg
    out = []
    for lp, node in zip(plan.layers, g.nodes):
        zp = (lambda t: qg.act_q[t].zero_point) if qg is not None else (lambda t: 0)
        c_in, h_in, w_in = lp.in_shapes[0]
        c_out, h_out, w_out = lp.out_shape
        kh = kw = sh = sw = 1
        pads = (0, 0, 0, 0)
        groups = 1
        flags = 0
        if isinstance(node, (ir.Conv2d, ir.MaxPool, ir.AvgPool)):
            (kh, kw), (sh, sw), pads = node.kernel, node.stride, node.padding
        if isinstance(node, ir.Conv2d):
            groups = node.groups
        if isinstance(node, ir.ChannelShuffle):
            groups = node.groups
        if isinstance(node, (ir.MaxPool, ir.AvgPool)) and node.ceil_mode:
            flags |= FLAGS["ceil_mode"]
        if isinstance(node, ir.AvgPool) and node.count_include_pad:
            flags |= FLAGS["count_include_pad"]
        if lp.kind == "im2col":
            flags |= FLAGS["im2col"]
        if lp.placement == "sdram":
            flags |= FLAGS["external"]
        if qg is not None and qg.io_dtype == "uint8":
            flags |= FLAGS["uint8"]
        base = dict(op=_op_code(plan, node, lp.kind), engine=ENGINES[lp.engine],
                    kh=kh, kw=kw, sh=sh, sw=sw, pad_top=pads[0], pad_left=pads[1],
                    pad_bottom=pads[2], pad_right=pads[3], groups=_u16(groups, "groups"),
                    bands=lp.bands, in_c=c_in, in_h=h_in, in_w=w_in, out_c=c_out, out_h=h_out,
                    out_w=w_out, node=lp.index, w_addr=lp.w_addr, w_bytes=lp.w_bytes,
                    ch_addr=lp.ch_addr, ch_bytes=lp.ch_bytes, lo=lp.lo, hi=lp.hi,
                    y_zp=zp(node.output), reserved=0, cycles=lp.cycles)
        if lp.kind == "remap":
            out.append(Descriptor(flags=flags | FLAGS["remap"], n_inputs=len(node.inputs),
                                  in0_addr=0, in0_pitch=0, in0_c=0, in1_addr=0, in1_pitch=0,
                                  in1_c=0, out_addr=0, out_pitch=0, out_pre=0,
                                  shuffle_groups=0, shuffle_channels=0, out_post=0,
                                  const_addr=0, const_bytes=0, x_zp=zp(node.inputs[0]),
                                  in1_zp=0, part=0, **base))
            continue
        o = lp.output
        outf = dict(out_addr=o.addr, out_pitch=_u16(o.pitch, "pitch"), out_pre=o.pre,
                    shuffle_groups=o.shuffle_groups, shuffle_channels=o.shuffle_channels,
                    out_post=o.post)
        tables = _tables(plan, node)
        if lp.kind == "copy" and isinstance(node, ir.Concat):
            off = 0
            for j, (v, t) in enumerate(zip(lp.inputs, node.inputs)):
                f = flags | (FLAGS["table"] if tables[j] else 0)
                ta = lp.const_addr + 256 * sum(tables[:j]) if tables[j] else 0
                out.append(Descriptor(
                    flags=f, n_inputs=1, in0_addr=v.addr, in0_pitch=v.pitch, in0_c=v.channels,
                    in1_addr=0, in1_pitch=0, in1_c=0, **{**outf, "out_pre": o.pre + off},
                    const_addr=ta, const_bytes=256 if tables[j] else 0, x_zp=zp(t), in1_zp=0,
                    part=j, **{**base, "in_c": v.channels, "cycles": lp.cycles if j == 0 else 0}))
                off += v.channels
            continue
        v0 = lp.inputs[0]
        in0 = dict(in0_addr=v0.addr, in0_pitch=v0.pitch, in0_c=v0.channels)
        if isinstance(node, ir.ChannelSlice):     # a copy: read channels [start, stop)
            in0 = dict(in0_addr=v0.addr + node.start, in0_pitch=v0.pitch,
                       in0_c=node.stop - node.start)
        if len(lp.inputs) > 1:
            v1 = lp.inputs[1]
            in1 = dict(in1_addr=v1.addr, in1_pitch=v1.pitch, in1_c=v1.channels,
                       in1_zp=zp(node.inputs[1]))
        else:
            in1 = dict(in1_addr=0, in1_pitch=0, in1_c=0, in1_zp=0)
        if any(tables):
            flags |= FLAGS["table"]
        out.append(Descriptor(flags=flags, n_inputs=len(node.inputs), **in0, **in1, **outf,
                              const_addr=lp.const_addr, const_bytes=lp.const_bytes,
                              x_zp=zp(node.inputs[0]), part=0, **base))
    return tuple(out)


def encode_program(plan: Plan) -> bytes:
    """program.bin: header, descriptors, CRC32 trailer (firmware/README.md)."""
    ds = descriptors(plan)
    e = plan.engines
    wimg = weight_image(plan) if plan.qg is not None else b""
    iv, ov = plan.input_view, plan.output_view
    ishape = plan.graph.input_shape
    oshape = plan.graph.output_shape
    head = HEADER.pack(PROGRAM_MAGIC, VERSION, HEADER.size, DESCRIPTOR.size, len(ds),
                       plan.arena_bytes, len(wimg), zlib.crc32(wimg),
                       iv.addr, iv.pitch, ishape[0], ishape[1], ishape[2],
                       ov.addr, ov.pitch, oshape[0], oshape[1], oshape[2],
                       e.sa_rows, e.sa_cols, e.sa_lanes, e.dw_lanes, e.dw_k, e.rq_lanes,
                       e.vec_lanes, 0)
    body = head + b"".join(d.pack() for d in ds)
    return body + struct.pack("<I", zlib.crc32(body))


def decode_program(data: bytes) -> Program:
    """Parse and check program.bin (magic, version, sizes, CRC32).

    Raises
    ------
    ProgramFormatError
        If the data is truncated, corrupted (CRC mismatch) or of another format version.
    """
    data = bytes(data)
    if len(data) < HEADER.size + 4:
        raise ProgramFormatError(f"program is {len(data)} bytes, shorter than its "
                                 f"{HEADER.size}-byte header")
    h = HEADER.unpack_from(data, 0)
    magic, version, hsize, dsize, n = h[:5]
    if magic != PROGRAM_MAGIC:
        raise ProgramFormatError(f"not an hwgen program (magic {magic!r}, expected {PROGRAM_MAGIC!r})")
    if version != VERSION or hsize != HEADER.size or dsize != DESCRIPTOR.size:
        raise ProgramFormatError(f"program format version {version} (header {hsize}, descriptor "
                                 f"{dsize} bytes); this hwgen reads version {VERSION}")
    end = hsize + n * dsize
    if len(data) != end + 4:
        raise ProgramFormatError(f"program is {len(data)} bytes, its header says {end + 4} "
                                 f"({n} descriptors): truncated or padded")
    (crc,) = struct.unpack_from("<I", data, end)
    if zlib.crc32(data[:end]) != crc:
        raise ProgramFormatError("program CRC32 mismatch: the file is corrupted")
    ds = tuple(Descriptor(*DESCRIPTOR.unpack_from(data, hsize + i * dsize)) for i in range(n))
    names = ("addr", "pitch", "c", "h", "w")
    return Program(version=version, arena_bytes=h[5], weights_bytes=h[6], weights_crc32=h[7],
                   input=dict(zip(names, h[8:13])), output=dict(zip(names, h[13:18])),
                   engines=dict(zip(("sa_rows", "sa_cols", "sa_lanes", "dw_lanes", "dw_k",
                                     "rq_lanes", "vec_lanes", "flags"), h[18:26])),
                   descriptors=ds)


# --- weight image -------------------------------------------------------------------------------

def _sa_matrix(node: ir.Node, w: np.ndarray, in_shape) -> np.ndarray:
    """(O, K_total) int8 in the array's reduction order: (ky, kx, ci) for convs, the
    activation buffer's (pixel, channel) order for FullyConnected."""
    if isinstance(node, ir.FullyConnected):
        c, h, wd = in_shape
        return w.reshape(w.shape[0], c, h * wd).transpose(0, 2, 1).reshape(w.shape[0], -1)
    return w.transpose(0, 2, 3, 1).reshape(w.shape[0], -1)


def _sa_block(wmat: np.ndarray, groups: int, cols: int) -> np.ndarray:
    """(groups, otiles, K, C) stream order with zero lanes past cout/groups."""
    o, kt = wmat.shape
    og = o // groups
    ot = -(-og // cols)
    blk = np.zeros((groups, ot * cols, kt), np.int8)
    blk[:, :og] = wmat.reshape(groups, og, kt)
    return blk.reshape(groups, ot, cols, kt).transpose(0, 1, 3, 2)


def _dw_block(w: np.ndarray, lanes: int) -> np.ndarray:
    """(groups, k*k, P) tap order with zero lanes past the channel count."""
    c, _, kh, kw = w.shape
    gr = -(-c // lanes)
    blk = np.zeros((gr * lanes, kh * kw), np.int8)
    blk[:c] = w.reshape(c, kh * kw)
    return blk.reshape(gr, lanes, kh * kw).transpose(0, 2, 1)


def _channel_records(bias: np.ndarray, scale: np.ndarray) -> bytes:
    m, e = arith.decompose_scale(np.asarray(scale, np.float32))
    rec = np.zeros(len(bias), dtype=[("bias", "<i4"), ("scale", "<u4")])
    rec["bias"] = np.asarray(bias, np.int64)
    rec["scale"] = np.asarray(m, np.int64) | (np.asarray(e, np.int64) << 24)
    return rec.tobytes()


def _const_block(plan: Plan, node: ir.Node) -> bytes:
    qg = plan.qg
    q = qg.act_q
    offset = 128 if qg.io_dtype == "uint8" else 0
    lp = plan.layer(node.name)
    if isinstance(node, ir.Add):
        from ..hw.add import add_config
        a, b = (q[t] for t in node.inputs)
        try:
            cfg = add_config(a.scale, a.zero_point, b.scale, b.zero_point, q[node.output].scale,
                             q[node.output].zero_point, lp.lo, lp.hi, offset)
        except ValueError as err:
            raise ir.IRError(node.name, str(err)) from None
        return struct.pack("<IIqBBBBbb10x", cfg.a_m, cfg.b_m, cfg.fixed, cfg.a_sh, cfg.b_sh,
                           cfg.rshift, cfg.offset, cfg.lo, cfg.hi)
    if isinstance(node, ir.AvgPool) and lp.kind == "avgpool":
        x, y = q[node.inputs[0]], q[node.output]
        bits = lambda s: int(np.float32(s).view(np.uint32))   # noqa: E731
        fl = (1 if node.count_include_pad else 0) | (2 if node.ceil_mode else 0)
        return struct.pack("<IIbbBbb3x", bits(x.scale), bits(y.scale), x.zero_point,
                           y.zero_point, fl, lp.lo, lp.hi)
    if isinstance(node, (ir.MaxPool, ir.Concat, ir.ChannelShuffle, ir.ChannelSlice)):
        y = q[node.output]
        parts = [arith.rescale_lut(q[t].scale, q[t].zero_point, y.scale, y.zero_point).tobytes()
                 for t, tab in zip(node.inputs, _tables(plan, node)) if tab]
        return b"".join(parts)
    return b""


def weight_image(plan: Plan) -> bytes:
    """weights.bin: header, section A (int8 weights), section B (channel parameters and op
    constants), CRC32 trailer, each block at the address its descriptor names.

    Raises ValueError for a sizing-only plan (made from a float graph)."""
    if plan.qg is None:
        raise ValueError("the plan was made from a float graph: quantise it (hwgen.quantize) "
                         "and plan the QGraph to get a weight image")
    qg, g, e = plan.qg, plan.graph, plan.engines
    img = bytearray(plan.weights_bytes)
    a_end = WEIGHTS_SECTION_A
    b_start = None
    for lp, node in zip(plan.layers, g.nodes):
        if lp.w_bytes:
            w = qg.weights[node.name]
            if lp.kind == "dw":
                blk = _dw_block(w.weight, e.dw_lanes)
            else:
                blk = _sa_block(_sa_matrix(node, w.weight, lp.in_shapes[0]),
                                getattr(node, "groups", 1), e.sa_cols)
            raw = blk.tobytes()
            assert len(raw) == lp.w_bytes, (node.name, len(raw), lp.w_bytes)
            img[lp.w_addr:lp.w_addr + len(raw)] = raw
            a_end = max(a_end, lp.w_addr + len(raw))
        if lp.ch_bytes:
            x = qg.act_q[node.inputs[0]]
            y = qg.act_q[node.output]
            if lp.kind == "gap":
                h, wd = lp.in_shapes[0][1:]
                raw = _channel_records(np.array([-x.zero_point * h * wd]),
                                       np.array([arith.gavg_scale(x.scale, y.scale, h * wd)]))
            else:
                w = qg.weights[node.name]
                raw = _channel_records(w.bias, arith.conv_scale(x.scale, w.scale, y.scale))
            assert len(raw) == lp.ch_bytes
            img[lp.ch_addr:lp.ch_addr + len(raw)] = raw
            b_start = lp.ch_addr if b_start is None else min(b_start, lp.ch_addr)
        if lp.const_bytes:
            raw = _const_block(plan, node)
            assert len(raw) == lp.const_bytes, (node.name, len(raw), lp.const_bytes)
            img[lp.const_addr:lp.const_addr + len(raw)] = raw
            b_start = lp.const_addr if b_start is None else min(b_start, lp.const_addr)
    b0 = -(-a_end // 16) * 16 if b_start is None else b_start
    img[:WEIGHTS_HEADER.size] = WEIGHTS_HEADER.pack(
        WEIGHTS_MAGIC, VERSION, WEIGHTS_HEADER_BYTES, e.sa_cols, e.dw_lanes,
        WEIGHTS_SECTION_A, a_end - WEIGHTS_SECTION_A, b0, len(img) - b0, len(img))
    return bytes(img) + struct.pack("<I", zlib.crc32(bytes(img)))


def decode_weight_image(data: bytes) -> dict:
    """Header fields of weights.bin after checking magic, version, size and CRC32."""
    data = bytes(data)
    if len(data) < WEIGHTS_SECTION_A + 4:
        raise ProgramFormatError(f"weight image is {len(data)} bytes: truncated")
    magic, version, hsize, word, dwl, a0, an, b0, bn, total = WEIGHTS_HEADER.unpack_from(data, 0)
    if magic != WEIGHTS_MAGIC or version != VERSION or hsize != WEIGHTS_HEADER_BYTES:
        raise ProgramFormatError(f"not an hwgen weight image of version {VERSION} "
                                 f"(magic {magic!r}, version {version})")
    if len(data) != total + 4:
        raise ProgramFormatError(f"weight image is {len(data)} bytes, its header says {total + 4}")
    if zlib.crc32(data[:total]) != struct.unpack_from("<I", data, total)[0]:
        raise ProgramFormatError("weight image CRC32 mismatch: the file is corrupted")
    return {"version": version, "word_bytes": word, "dw_lanes": dwl, "section_a": (a0, an),
            "section_b": (b0, bn), "total": total}


# --- layers.json and the build directory ------------------------------------------------------

def layers_json(plan: Plan) -> dict:
    """The human-readable twin of program.bin (per layer: op, engine, shapes, addresses,
    estimated cycles, MACs) with the plan's totals."""
    layers = []
    for lp in plan.layers:
        d = {"index": lp.index, "name": lp.name, "op": lp.op, "kind": lp.kind,
             "engine": lp.engine, "in_shapes": [list(s) for s in lp.in_shapes],
             "out_shape": list(lp.out_shape), "macs": lp.macs, "cycles": lp.cycles,
             "ideal_cycles": lp.ideal_cycles, "bands": lp.bands,
             "utilization": (lp.macs / (lp.cycles * plan.mac_units)) if lp.cycles else 0.0,
             "inputs": [asdict(v) for v in lp.inputs],
             "output": asdict(lp.output) if lp.output else None,
             "clamp": [lp.lo, lp.hi],
             "weights": {"placement": lp.placement, "w_addr": lp.w_addr, "w_bytes": lp.w_bytes,
                         "ch_addr": lp.ch_addr, "ch_bytes": lp.ch_bytes,
                         "const_addr": lp.const_addr, "const_bytes": lp.const_bytes,
                         "external_bytes_per_inference": lp.ext_bytes}}
        layers.append(d)
    return {"format": "hwgen-layers", "version": VERSION, **plan.summary(),
            "storages": [asdict(s) for s in plan.storages],
            "input": asdict(plan.input_view), "output": asdict(plan.output_view),
            "layers": layers}


def _write_atomic(path: Path, data: bytes) -> bool:
    """Write ``data`` to ``path`` through a temporary file and a rename; skip when the
    file already holds exactly ``data``. Returns whether the file was written."""
    if path.exists() and path.read_bytes() == data:
        return False
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return True


def write_build_files(plan: Plan, outdir) -> dict[str, Path]:
    """Write program.bin, weights.bin and layers.json into ``outdir`` (created if needed),
    each atomically and only when its content changed. Returns their paths."""
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"program": out / "program.bin", "weights": out / "weights.bin",
             "layers": out / "layers.json"}
    _write_atomic(files["weights"], weight_image(plan))
    _write_atomic(files["program"], encode_program(plan))
    _write_atomic(files["layers"], (json.dumps(layers_json(plan), indent=1) + "\n").encode())
    return files


# --- the sequencer's reference ----------------------------------------------------------------

def _gather(arena: np.ndarray, addr: int, pitch: int, c: int, h: int, w: int) -> np.ndarray:
    a = addr + np.arange(h * w)[None, :] * pitch + np.arange(c)[:, None]
    return arena[a].reshape(c, h, w).astype(np.int8)


def simulate(plan: Plan, x: np.ndarray, expect: dict | None = None) -> np.ndarray:
    """Run the program on one image through the activation arena, as the sequencer does.

    Every layer reads its inputs from the arena at the planned views, computes with the
    golden integer op, applies its descriptor clamp (folded Concat activations) and writes
    through its output place (channel offset, shuffle); remaps do nothing. ``expect`` (the
    dict of :func:`hwgen.golden.run` with ``all_tensors=True``) checks every tensor read,
    so a tensor overwritten while still live is reported at the layer that reads it.

    Parameters
    ----------
    plan: a plan of a QGraph. x: (1, C, H, W) or (C, H, W) input in the graph's io dtype.

    Returns
    -------
    The output tensor (1, C, H, W) in the graph's io dtype.
    """
    from ..golden.runner import _node
    qg, g = plan.qg, plan.graph
    if qg is None:
        raise ValueError("simulate needs a plan of a QGraph")
    x = np.asarray(x)
    x = x[0] if x.ndim == 4 else x
    offset = 128 if qg.io_dtype == "uint8" else 0
    if offset:
        x = (x.astype(np.int16) - 128).astype(np.int8)
    arena = np.full(max(plan.arena_bytes, 1), 0x55, np.int64)   # garbage, not zeros
    iv = plan.input_view
    c, h, w = g.input_shape
    arena[iv.addr + np.arange(h * w)[None, :] * iv.pitch + np.arange(c)[:, None]] = x.reshape(c, -1)
    for lp, node in zip(plan.layers, g.nodes):
        if lp.kind == "remap":
            continue
        xs = []
        for v, t in zip(lp.inputs, node.inputs):
            xin = _gather(arena, v.addr, v.pitch, *g.shapes[t])
            if expect is not None:
                exp = np.asarray(expect[t])[0]
                if not np.array_equal(xin, exp):
                    raise AssertionError(f"layer '{node.name}' reads tensor '{t}' from the "
                                         f"arena and finds other data than the golden model's: "
                                         f"the buffer plan overwrote it while it was live")
            xs.append(xin[None])
        y = np.clip(_node(qg, node, xs, offset)[0], lp.lo, lp.hi)
        co, ho, wo = lp.out_shape
        o = lp.output
        ch = o.channel(np.arange(co))
        arena[o.addr + np.arange(ho * wo)[None, :] * o.pitch + ch[:, None]] = y.reshape(co, -1)
    ov = plan.output_view
    y = _gather(arena, ov.addr, ov.pitch, *g.output_shape)[None]
    return (y.astype(np.int16) + 128).astype(np.uint8) if offset else y
