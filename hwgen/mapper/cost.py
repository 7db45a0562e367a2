"""Cost model of the mapper: cycles per layer, LUT4 / MULT18X18D / DP16KD per engine.

Every constant here is an *estimate* (documented next to it) until measured figures from
synthesis replace it; the cycle formulas follow the engines' documented dataflows
(:mod:`hwgen.hw.systolic`, :mod:`hwgen.hw.dwconv`, :mod:`hwgen.hw.requant`,
:mod:`hwgen.hw.add`) and the sequencer running one layer at a time.

Cycle model (one layer = one descriptor; the engines never overlap layers)
--------------------------------------------------------------------------
``LAYER_SETUP`` cycles per executed layer (descriptor fetch, engine configuration,
parameter preload) are added to every layer below.

* **Systolic array** (R x C output-stationary MACs, ``F`` activation bytes per cycle into the
  array: ``L`` for 1x1 convs and FC, read straight from the activation buffer; the im2col
  feeder's rate for K x K convs), Q requantiser lanes. A layer of ``Np`` output pixels,
  ``g`` groups, reduction ``K`` per group and ``cout/g`` channels per group runs
  ``ceil(Np/R)`` pixel tiles of ``g * otiles`` steps (``otiles = ceil(cout/g / C)``). One step
  is ``K`` beats, but not shorter than its drain through the requantiser
  (``nrows * ceil(C/Q)`` cycles plus the drain latency ``SA_DRAIN_GAP``), because the shadow
  accumulator bank must be empty before the next step completes. Loading the next pixel
  tile (``nrows * ceil(g*K/F)`` cycles) overlaps the current tile's steps; the first load
  and the last drain (``SA_LATENCY + REQUANT_LATENCY``) do not::

      cycles = load(0) + sum_t max(steps(t), load(t+1)) + drain + LAYER_SETUP

* **Depthwise engine** (P lanes, K x K, one input pixel beat per cycle): the input streams
  once per channel group, ``ceil(C/P) * H * W`` beats plus the flush of the last window
  (:attr:`hwgen.hw.dwconv.DwConvParams.stream_beats`); at stride 1 it emits one P-lane
  output per beat, which the requantiser drains in ``ceil(P/Q)`` cycles. Its K*K*P tap
  weights of each channel group are loaded from the weight store (C bytes per cycle) before
  the layer. Latency ``DW_LATENCY + REQUANT_LATENCY``.
* **Pool unit** (V lanes, hw/pool.py: 3x3 windows): MaxPool walks the extended raster
  (input plus the bottom/right padding cells some window ends on) once per channel group,
  one position per cycle; AvgPool additionally needs ``AVG_INTERVAL`` cycles per window
  (the sequential float32 finisher, all lanes in lock step), so
  ``max(groups * YE*XE, groups * OH*OW * AVG_INTERVAL)``; GlobalAvgPool sums ``H*W`` beats
  per group and time-shares one requantiser lane over the V results of a group
  (``groups * max(H*W, V)``).
* **Add unit** (V lanes): both operands come through the activation buffer's single read
  port: ``2 * ceil(C/V) * H*W`` cycles + ``ADD_LATENCY``.
* **Copy** (V lanes; a Concat / ChannelShuffle / ChannelSlice that cannot be an address
  remap, e.g. inputs with other quantisation parameters): ``ceil(C/V) * H*W``.
* **Address remaps** (free Concat, ChannelShuffle, ChannelSlice): 0 cycles.

Ideal cycles of a layer are ``MACs / peak MACs per cycle`` of its engine (``R*C``, ``P*K*K``)
or ``elements / V``; utilisation is ``MACs / (cycles * (R*C + P*K*K))``.

Resource model
--------------
MULT18X18D: one per systolic MAC (int8 x 9-bit (x - zp) products do not pack two into one
18 x 18 multiplier), K*K per depthwise lane, ``REQUANT_DSP_PER_LANE`` per requantiser lane,
``ADD_DSP_PER_LANE`` per add lane, ``AVGPOOL_DSP_PER_LANE`` per AvgPool lane, ``GAP_DSP``
for the global-average requantiser, ``DSP_RESERVED`` for address arithmetic. DP16KD: every memory through :func:`dp16kd_for` (the best ECP5 block-RAM
aspect ratio); memories of at most ``LUTRAM_MAX_DEPTH`` words go to distributed RAM.
"""
from __future__ import annotations

from math import ceil

__all__ = [
    "dp16kd_for", "lutram_lut4", "sa_layer_cycles", "dw_layer_cycles", "stream_beats",
    "LAYER_SETUP", "LUT_PER_MAC", "LUT_SA_BASE", "LUT_PER_DW_LANE", "LUT_DW_BASE",
    "LUT_PER_REQUANT_LANE", "LUT_PER_ADD_LANE", "LUT_PER_POOL_LANE", "LUT_POOL_BASE",
    "LUT_AVGPOOL_BASE", "LUT_PER_AVGPOOL_LANE", "LUT_IM2COL", "LUT_SEQUENCER", "LUT_HOST",
    "DSP_RESERVED", "REQUANT_DSP_PER_LANE", "ADD_DSP_PER_LANE", "CHANNEL_PARAM_BYTES",
    "AVG_INTERVAL", "AVGPOOL_DSP_PER_LANE", "GAP_DSP", "LUT_GAP", "pool_extent",
    "DESCRIPTOR_BYTES_ESTIMATE",
]

# --- cycles -------------------------------------------------------------------------------
#: Per-layer sequencer overhead: descriptor fetch (a few words), engine configuration,
#: pipeline restart. Estimate.
LAYER_SETUP = 16
#: Systolic array: cycles from a tile's last beat to its first output (hw/systolic.py).
SA_LATENCY = 7
#: Extra cycles between back-to-back drains of the shadow bank (hw/systolic.py: no stall
#: when K >= R + 6).
SA_DRAIN_GAP = 6
#: Requantiser pipeline latency (hw/requant.py: 14 cycles).
REQUANT_LATENCY = 14
#: Depthwise engine pipeline latency (line window 2 + multiplier 3 + adder tree + bias).
DW_LATENCY = 10
#: Add unit latency (hw/add.py: Adder.LATENCY = 23).
ADD_LATENCY = 23
#: Pool unit latency (window 2 + comparator tree / accumulator + output register).
POOL_LATENCY = 6
#: AvgPool finisher initiation interval per window (hw/pool.py ``PoolParams.avg_interval``
#: with the default 3 quotient bits per cycle).
AVG_INTERVAL = 24

# --- LUT4 (estimates, to be replaced by measured synthesis figures) -----------------------
#: One int8 MAC with its int32 accumulator (32-bit adder ~32 LUT4), the shadow register
#: bank's drain multiplexer (~16) and operand fan-out / enable logic (~12).
LUT_PER_MAC = 60
#: Systolic control: tile counters, activation-store addressing, weight-stream handshake.
LUT_SA_BASE = 800
#: One depthwise lane: 9-input adder tree of 17-bit products (~180), bias add (32),
#: padding masks and window multiplexing (~90).
LUT_PER_DW_LANE = 300
#: Depthwise control: raster counters, emit-position compare, credit counter, FIFO.
LUT_DW_BASE = 600
#: One requantiser lane: two leading-one detectors, two barrel shifters, rounding
#: (docs/arithmetic.md: 400-500 LUT4).
LUT_PER_REQUANT_LANE = 450
#: One residual-add lane (docs/arithmetic.md: about 500 LUT4).
LUT_PER_ADD_LANE = 500
#: One max-pool / global-average lane: 8 byte comparators (~64), a 32-bit accumulator (~32).
LUT_PER_POOL_LANE = 100
#: Pool control (raster counters, window masks).
LUT_POOL_BASE = 300
#: AvgPool control (finisher sequencing, constants).
LUT_AVGPOOL_BASE = 300
#: One AvgPool lane (hw/pool.py AvgFinisher): float32 running sum with its rounding, a
#: restoring divider (3 quotient bits per cycle), normalisation and the final rounding.
LUT_PER_AVGPOOL_LANE = 900
#: AvgPool lane multipliers: one 24 x 8 UMul (two 17-bit limbs: two MULT18X18D).
AVGPOOL_DSP_PER_LANE = 2
#: GlobalAvgPool: the pool unit's own one-lane requantiser (hw/pool.py).
GAP_DSP = 4
LUT_GAP = 600
#: im2col window feeder (hw/im2col.py), per byte lane of output.
LUT_IM2COL = 400
#: Sequencer: program store decode, layer FSM, activation/weight address generators.
LUT_SEQUENCER = 2000
#: Board top level: UART host link with framing and CRC32, status LEDs, reset logic.
LUT_HOST = 1500
#: Free-address-remap logic (channel offset + shuffle permuter, hw/shuffle.py).
LUT_REMAP = 150

# --- MULT18X18D ------------------------------------------------------------------------------
#: Requantiser: 24 x 24-bit mantissa product on four MULT18X18D (hw/requant.py).
REQUANT_DSP_PER_LANE = 4
#: Residual add: two 24 x 8 products (hw/add.py: 4 MULT18X18D per lane).
ADD_DSP_PER_LANE = 4
#: Address arithmetic: the shuffle remap's UMul (hw/shuffle.py) and the pixel * pitch
#: multiply of the activation address generator.
DSP_RESERVED = 2

# --- bytes -----------------------------------------------------------------------------------
#: Channel-parameter record (one 64-bit word of the channel store) per output channel:
#: int32 bias and the requantisation scale word ``m | e << 24`` (24-bit mantissa, 6-bit
#: exponent; hw/requant.py ``encode_scales``). The output zero point and clamp are per
#: layer (in the descriptor).
CHANNEL_PARAM_BYTES = 8
#: One layer descriptor in the program store (see hwgen/mapper/program.py).
DESCRIPTOR_BYTES_ESTIMATE = 96

# --- block RAM ---------------------------------------------------------------------------------
#: ECP5 DP16KD aspect ratios (depth, width in bits); 512 x 36 is the pseudo-dual-port mode.
DP16KD_CONFIGS = ((16384, 1), (8192, 2), (4096, 4), (2048, 9), (1024, 18), (512, 36))
#: Memories this shallow are mapped to distributed (LUT) RAM by yosys' memory_libmap.
LUTRAM_MAX_DEPTH = 64


def dp16kd_for(depth: int, width_bits: int) -> int:
    """DP16KD blocks for a ``depth`` x ``width_bits`` memory (best aspect ratio; 0 if it is
    empty or shallow enough for distributed RAM).

    >>> dp16kd_for(2048, 8), dp16kd_for(2048, 128), dp16kd_for(100, 8), dp16kd_for(4096, 8)
    (1, 15, 1, 2)
    """
    if depth <= 0 or width_bits <= 0 or depth <= LUTRAM_MAX_DEPTH:
        return 0
    return min(ceil(width_bits / w) * ceil(depth / d) for d, w in DP16KD_CONFIGS)


def lutram_lut4(depth: int, width_bits: int) -> int:
    """LUT4 of a distributed-RAM memory (ECP5 DPR16X4: 16 x 4 bits in 2 LUT4 + read mux);
    0 for memories that go to block RAM (:func:`dp16kd_for`)."""
    if depth <= 0 or width_bits <= 0 or depth > LUTRAM_MAX_DEPTH:
        return 0
    return 2 * ceil(depth / 16) * ceil(width_bits / 4) + width_bits


# --- cycle formulas ------------------------------------------------------------------------------

def sa_layer_cycles(pixels: int, k: int, cout_g: int, groups: int, rows: int, cols: int,
                    feed: int, rq_lanes: int) -> int:
    """Cycles of one layer on the systolic array (see the module docstring).

    Parameters
    ----------
    pixels, k, cout_g, groups: the layer as :class:`hwgen.hw.systolic.SystolicLayer` sees it.
    rows, cols: R and C. feed: activation bytes per cycle into the array.
    rq_lanes: requantiser lanes Q.
    """
    otiles = -(-cout_g // cols)
    beats_px = -(-(groups * k) // feed)          # load cycles per pixel
    drain_row = -(-cols // rq_lanes)             # requantiser cycles per drained pixel row
    full, rem = divmod(pixels, rows)

    def step(nrows):
        return max(k, nrows * drain_row + SA_DRAIN_GAP)

    def steps(nrows):
        return groups * otiles * step(nrows)

    first = rows if full else rem
    cyc = first * beats_px                        # first pixel-tile load, not overlapped
    if full:                                      # each tile's steps overlap the next load
        cyc += (full - 1) * max(steps(rows), rows * beats_px)
        cyc += max(steps(rows), rem * beats_px)
    if rem:
        cyc += steps(rem)
    cyc += (rem or rows) * drain_row + SA_LATENCY + REQUANT_LATENCY
    return cyc + LAYER_SETUP


def stream_beats(channel_groups: int, h: int, w: int, k: int, stride: int, top: int,
                 left: int, oh: int, ow: int) -> int:
    """Cycles a K x K window engine takes to stream ``channel_groups`` images of h x w
    (input beats, or the emit position of the last output + 1 when the last window needs
    flush beats), as :attr:`hwgen.hw.dwconv.DwConvParams.stream_beats`."""
    last = ((channel_groups - 1) * h * w + ((oh - 1) * stride - top + k - 1) * w
            + ((ow - 1) * stride - left + k - 1))
    return max(channel_groups * h * w, last + 1)


def dw_layer_cycles(c: int, h: int, w: int, k: int, stride: int, top: int, left: int,
                    oh: int, ow: int, lanes: int, rq_lanes: int, wstore_bytes: int) -> int:
    """Cycles of one depthwise layer on a ``lanes``-lane engine (module docstring)."""
    groups = -(-c // lanes)
    stream = stream_beats(groups, h, w, k, stride, top, left, oh, ow)
    drain = groups * oh * ow * (-(-lanes // rq_lanes))
    load_w = -(-(groups * k * k * lanes) // wstore_bytes)
    return max(stream, drain) + load_w + DW_LATENCY + REQUANT_LATENCY + LAYER_SETUP


def pool_extent(h: int, w: int, k: int, stride: int, top: int, left: int, oh: int,
                ow: int) -> tuple[int, int]:
    """(YE, XE): the extended raster the pool unit walks (hw/pool.py ``PoolParams.config``)."""
    return (max(h, (oh - 1) * stride - top + k), max(w, (ow - 1) * stride - left + k))
