"""Cost model of the mapper: cycles per layer, LUT4 / MULT18X18D / DP16KD per unit, for the
accelerator that :mod:`hwgen.hw.accelerator` builds.

The accelerator as built
------------------------
* one R x C output-stationary systolic array (:class:`hwgen.hw.systolic.SystolicConv`,
  activation lanes ``L = 1``) with a C-lane requantiser: every Conv2d (1x1, K x K, grouped),
  FullyConnected and GlobalAvgPool runs on it. :class:`hwgen.hw.layer_io.PatchFeeder`
  gathers one patch byte per cycle from the byte-wide arena, and
  :class:`hwgen.hw.layer_io.OutputWriter` stores one output byte per cycle through the
  :class:`hwgen.hw.layer_io.Placer`;
* a single-lane depthwise unit (:mod:`hwgen.hw.dwunit`, ``P = 1``) when the network has
  depthwise layers;
* a serial max-pool unit, a one-lane residual-add unit and a one-lane average-pool unit
  (:class:`hwgen.hw.pool.PoolUnit`), each only when the network has such layers;
* the sequencer, running one layer at a time.

Cycle model (one layer = one descriptor; units never overlap layers)
--------------------------------------------------------------------
Every executed layer costs the sequencer ``out_c + SEQ_OVERHEAD`` cycles (FETCH, LATCH, one
PARAM cycle per output channel: place table and requantiser record, START and two wait
cycles, NEXT, the
placer's drain), :func:`seq_cycles`. Address remaps (free Concat / ChannelShuffle /
ChannelSlice) cost 0.

* **Systolic array** (:func:`sa_layer_cycles`; ``Np`` output pixels, ``g`` groups, reduction
  ``k`` per group, ``cout_g`` channels per group; ``T = ceil(Np/R)`` pixel tiles of ``nrows``
  pixels, ``otiles = ceil(cout_g/C)``; ``nv`` valid lanes of an output tile). Three
  resources work in parallel, each one byte or one beat per cycle:

  - the patch feeder loads tile ``t`` (``nrows * g*k`` bytes) while tile ``t - 1`` computes
    (double-buffered activation store);
  - the array runs ``g * otiles`` steps per tile; a step takes
    ``max(k, nrows + SA_DRAIN_GAP, nv + SA_BIAS_GAP)`` cycles: ``k`` beats, but its last beat
    waits for the previous step's shadow bank to drain (``SA_DRAIN_GAP`` cycles of array
    latency plus one row per cycle) and its first beat for its bias vector (the bias
    feeder reads one channel record per cycle, plus handshake);
  - the output writer stores ``nrows * nv`` bytes per step, ``Np * cout`` in all.

  ::

      array  = load(0) + sum_{t<T-1} max(steps(t), load(t+1)) + steps(T-1) + last_step_bytes
      writer = load(0) + first_step + Np * cout
      cycles = max(array, writer) + SA_PIPE + seq_cycles(cout)

  ``SA_PIPE`` is the fill/drain latency (patch address pipeline, array, requantiser, placer),
  fitted to the measured per-layer cycles of MobileNet 0.25/96 on a 6 x 12 array.
  GlobalAvgPool is a grouped conv with ``g = C``, ``k = H*W``, one channel per group, on one
  pixel.
* **Depthwise unit** (1 lane, 3x3): streams the channels' planes one byte per cycle,
  ``c * max(h*w + DW_CH_OVERHEAD, (h*w + DW_LOADER_CYCLES) / 2) + w + DW_LATENCY``
  (:func:`dw_layer_cycles`; small planes wait for the per-channel parameter loader).
* **Max pool** (serial): ``kh*kw + 2*MEM_LATENCY + 1`` cycles per output element
  (``MAXPOOL_EXTRA``).
* **Add** (one lane): both operands through the arena's single read port, 2 cycles per
  element, plus ``ADD_LATENCY``.
* **Average pool** (:class:`hwgen.hw.pool.PoolUnit`, one lane, channel planes back to back):
  per channel the walk of the extended raster ``YE x XE`` or one window per
  :attr:`hwgen.hw.pool.PoolParams.avg_interval` cycles, whichever is longer.
* **Copy** (a Concat / shuffle / slice that is no address remap: not built yet): one byte
  per cycle.

Ideal cycles of a layer are ``MACs / peak MACs per cycle`` of its unit (``R*C``; 9 for the
depthwise unit) or its elements (one lane); utilisation is
``MACs / (cycles * (R*C + P*9))``.

Resource model
--------------
LUT4 counts are LUT4-equivalents as :class:`hwgen.synth.SynthReport` reports them
(``LUT4 + 2 * CCU2C``). MULT18X18D: one per MAC of the array, ``REQUANT_DSP_PER_LANE`` per
requantiser lane (C lanes), ``DW_DSP`` for the depthwise unit, ``ADD_DSP`` for the add
unit, ``AVGPOOL_DSP`` for the average-pool unit, ``DSP_ADDRESS`` for address arithmetic
(patch feeder, placer, image loader). DP16KD: the explicit block-RAM stores
(:class:`hwgen.hw.bram.BlockRam`, always at least one block) through
:func:`hwgen.hw.bram.dp16kd_geometry` (:func:`bram_blocks`), the array's activation store
(:class:`hwgen.hw.systolic.ByteRam`: R rows x 2 banks of ``2**ceil(log2(max_k))`` bytes),
the requantiser lanes' parameter memories (:func:`requant_param_blocks`) and memories yosys
infers (:func:`dp16kd_for`: the line buffers, the host link's staging buffer).
Calibrated against yosys ``synth_ecp5`` of the VWW MobileNet 0.25/96/2 board design (85F,
UART host link): 4 x 12 array with the depthwise unit (classic ABC LUT mapping): 114
MULT18X18D, 174 DP16KD, 15,588 LUT4 + 3,939 CCU2C (model: 114, 174, 23,504 LUT4-eq.);
6 x 12 array running depthwise layers on the array (ABC9): 182 DP16KD, 15,504 LUT4 +
3,567 CCU2C.
"""
from __future__ import annotations

from functools import lru_cache
from math import ceil

from ..hw.bram import LUTRAM_MAX_DEPTH, dp16kd_geometry, kept_tree_latency

__all__ = [
    "dp16kd_for", "bram_blocks", "requant_param_blocks", "lutram_lut4", "seq_cycles",
    "sa_layer_cycles", "sa_operand_stages", "sa_store_blocks", "dw_layer_cycles", "maxpool_cycles", "add_cycles", "avgpool_cycles",
    "avg_interval", "pool_extent",
    "SEQ_OVERHEAD", "SA_PIPE", "SA_DRAIN_GAP", "SA_BIAS_GAP", "DW_CH_OVERHEAD", "DW_LOADER_CYCLES",
    "DW_LATENCY", "MAXPOOL_EXTRA", "MAXPOOL_LATENCY", "ADD_LATENCY", "AVGPOOL_LATENCY",
    "LUT_PER_MAC", "LUT_SA_BASE", "LUT_PER_REQUANT_LANE", "LUT_FEEDERS", "LUT_FEEDER_PER_COL",
    "LUT_SEQUENCER", "LUT_PER_DESCRIPTOR", "LUT_HOST", "LUT_REMAP", "LUT_DW", "LUT_MAXPOOL",
    "LUT_ADD", "LUT_AVGPOOL", "LUT_COPY",
    "REQUANT_DSP_PER_LANE", "DW_DSP", "ADD_DSP", "AVGPOOL_DSP", "DSP_ADDRESS",
    "DW_LINE_BUFFERS", "HOST_BUFFER_BYTES", "PLACE_BITS", "REQUANT_PARAM_BITS",
    "CHANNEL_PARAM_BYTES",
]

# --- cycles -------------------------------------------------------------------------------
#: Sequencer cycles per executed layer besides one PARAM cycle per output channel: FETCH, FETCH2,
#: LATCH, START, WAIT1, WAIT2, NEXT, the registered layer-done flag and the placer's drain
#: (hw/sequencer.py, hw/layer_io.py Placer), and the block RAMs' root registers
#: (MEM_LATENCY 6: the first read and the place table's last lookup, a cycle each; the
#: arena's write root: the last write lands a cycle later).
SEQ_OVERHEAD = 16
#: Systolic layer fill and drain: patch-address pipeline (17), array (11), requantiser input
#: registers and pipeline (21), output FIFO (its output register and skid buffer), writer
#: stages, placer (6), the registered
#: writer-count compare and the credit loops, less what overlaps, with one operand-register
#: stage in front of the multipliers (an array of more than 4 columns has two:
#: :func:`sa_operand_stages`); fitted to the measured MobileNet 0.25/96 layers on its 4 x 12
#: array (pw8 13,423, pw14 18,259, fc 595, GAP 5,709, conv1 62,353 cycles: all within
#: +-0.1 %).
SA_PIPE = 62
#: A step's last beat waits until the previous step's shadow bank has drained: the array's
#: latency from a last beat to the shadow bank (10 cycles, with one operand-register stage)
#: plus one row per cycle (hw/systolic.py ``pending``).
SA_DRAIN_GAP = 10
#: A step's bias vector: the bias feeder reads ``nv`` channel records, one per cycle, then
#: the address and data registers, two cycles (SETTLE, OUT) and the handshake (BiasFeeder).
SA_BIAS_GAP = 5
#: Depthwise unit (hw/dwunit.py): extra cycles per channel plane. The unit streams channel
#: planes back to back: measured in the accelerator (MobileNet 0.25/96, dw2..dw13, 6x6 to
#: 48x48 planes) within 2 cycles of ``C*H*W + W + DW_LATENCY`` plus the sequencer, so 0.
DW_CH_OVERHEAD = 0
#: Depthwise unit: small planes are bound by the per-channel parameter loader. Channel
#: ``n``'s 9 tap bytes and record load only once the multipliers took channel ``n - 2``'s
#: last window (two register sets), so two channels take at least ``h*w`` plus this many
#: cycles: measured 10.9, 13.5 and 17 cycles per channel for 2x2, 3x3 and 4x4 planes
#: (ShuffleNet 0.5x/64 stage 4 / 3, MobileNet dw14).
DW_LOADER_CYCLES = 18
#: Depthwise unit: setup, first parameter load, pipeline latency (multipliers, adder tree,
#: requantiser) per layer.
DW_LATENCY = 52
#: Max-pool unit: cycles per output element beyond its kh*kw taps: the last tap's read and
#: the rescale-table read (MEM_LATENCY each, hw/layer_io.MaxPoolUnit), WRITE.
MAXPOOL_EXTRA = 2 * 6 + 1
#: Max-pool unit: start and placer latency.
MAXPOOL_LATENCY = 5
#: Add unit: read pipeline, FIFO, hw/add.py Adder.LATENCY (30), placer.
ADD_LATENCY = 36
#: Average-pool unit: FIFO, line buffer, finisher tail, placer.
AVGPOOL_LATENCY = 40

# --- LUT4 equivalents (LUT4 + 2 * CCU2C), calibrated on the VWW board design ---------------
#: One array MAC: 32-bit accumulate (16 CCU2C), bias/accumulator select, shadow register
#: shift multiplexer (bench/engines.py: 8 x 8 array 7,204 LUT4).
LUT_PER_MAC = 100
#: Array control, loader/issue counters, per-row flags.
LUT_SA_BASE = 500
#: One requantiser lane (hw/requant.py: leading-one detect, shifters, rounding, clamp;
#: bench/engines.py: 4 lanes 3,297 LUT4).
LUT_PER_REQUANT_LANE = 780
#: Patch feeder, weight feeder, bias feeder, output writer, placer, image loader.
LUT_FEEDERS = 1100
#: Per array column: bias vector register and select, weight FIFO, writer lane select.
LUT_FEEDER_PER_COL = 60
#: Sequencer FSM, place-table walk, cycle counters.
LUT_SEQUENCER = 900
#: Per program descriptor: the descriptor ROM (yosys maps it to logic).
LUT_PER_DESCRIPTOR = 50
#: Board top level: UART host link with framing and CRC32, status LEDs, reset logic.
LUT_HOST = 1500
#: Shuffle place-table walk (sequencer).
LUT_REMAP = 150
#: Depthwise unit (hw/dwunit.py docstring: about 1,740 LUT4 + 690 CCU2C).
LUT_DW = 3120
#: Serial max-pool unit (counters, incremental addresses, rescale-table select).
LUT_MAXPOOL = 600
#: One-lane add unit (hw/add.py Adder: two 24 x 8 products, alignment, rounding, clamp;
#: bench/engines.py: 2 lanes 5,765 LUT4) and its read sequencing.
LUT_ADD = 3200
#: One-lane average-pool unit (hw/pool.py PoolUnit AVG: walk, window, AvgFinisher with its
#: float32 sum and restoring dividers) and its configuration ROM.
LUT_AVGPOOL = 3000
#: A copy path (not built yet): counters and a byte mover.
LUT_COPY = 300

# --- MULT18X18D ------------------------------------------------------------------------------
#: Requantiser: 24 x 24-bit mantissa product on four MULT18X18D (hw/requant.py).
REQUANT_DSP_PER_LANE = 4
#: Depthwise unit: 9 taps and its one-lane requantiser (hw/dwunit.py).
DW_DSP = 9 + REQUANT_DSP_PER_LANE
#: Add unit: one lane of hw/add.py (two 24 x 8 products, 4 MULT18X18D).
ADD_DSP = 4
#: Average-pool unit: the AvgFinisher's 24 x 8 UMul (2 MULT18X18D).
AVGPOOL_DSP = 2
#: Address arithmetic: the patch feeder's row * in_w and pixel * pitch, the placer's
#: pixel * pitch, the image loader's multiply-shift division and c * H*W (yosys: 114 on the
#: VWW design with a 4 x 12 array = 48 MACs + 48 requantiser + 13 depthwise + 5).
DSP_ADDRESS = 5

# --- memories --------------------------------------------------------------------------------
#: Depthwise unit: two line buffers of ``line_width`` 9-bit words (hw/dwunit.py; block RAM
#: when deeper than LUTRAM_MAX_DEPTH, else distributed RAM).
DW_LINE_BUFFERS = 2
#: Host link staging buffer (hw/hostlink.py ``max_chunk``), inferred block RAM.
HOST_BUFFER_BYTES = 1024
#: Place table word (hw/accelerator.py ``ptable``: 17 bits per output channel).
PLACE_BITS = 17
#: One requantiser lane's parameter word (hw/requant.py PARAM_LAYOUT: 24 + 6 bits).
REQUANT_PARAM_BITS = 30
#: Channel-parameter record (one 64-bit word of the channel store) per output channel:
#: int32 bias and the requantisation scale word ``m | e << 24``.
CHANNEL_PARAM_BYTES = 8

# --- block RAM ---------------------------------------------------------------------------------
#: ECP5 DP16KD aspect ratios (depth, width in bits) yosys' memory_libmap may choose;
#: 512 x 36 is the pseudo-dual-port mode.
DP16KD_CONFIGS = ((16384, 1), (8192, 2), (4096, 4), (2048, 9), (1024, 18), (512, 36))


def dp16kd_for(depth: int, width_bits: int) -> int:
    """DP16KD blocks of a memory yosys infers, ``depth`` x ``width_bits`` (best aspect
    ratio; 0 if it is empty or shallow enough for distributed RAM).

    >>> dp16kd_for(2048, 8), dp16kd_for(2048, 128), dp16kd_for(100, 8), dp16kd_for(4096, 8)
    (1, 15, 1, 2)
    """
    if depth <= 0 or width_bits <= 0 or depth <= LUTRAM_MAX_DEPTH:
        return 0
    return min(ceil(width_bits / w) * ceil(depth / d) for d, w in DP16KD_CONFIGS)


def bram_blocks(width_bits: int, depth: int, wide: bool = False) -> int:
    """DP16KD blocks of an explicit :class:`hwgen.hw.bram.BlockRam` (at least one: the
    accelerator instantiates every store even when it is empty); ``wide``: latency 1, the
    36-bit mode allowed (the stores have latency 2 and up: 9- or 18-bit mode)."""
    _, cols, rows = dp16kd_geometry(width_bits, max(depth, 2), wide=wide)
    return cols * rows


def requant_param_blocks(channels: int) -> int:
    """DP16KD blocks of one requantiser lane's parameter memory (hw/requant.py: a
    latency-1 :class:`hwgen.hw.bram.BlockRam`, or distributed RAM when shallow)."""
    if channels <= LUTRAM_MAX_DEPTH:
        return 0
    return bram_blocks(REQUANT_PARAM_BITS, channels, wide=True)


def sa_store_blocks(rows: int, max_k: int) -> int:
    """DP16KD blocks of the array's activation store (hw/systolic.py ByteRam, L = 1): per
    row two banks of ``2**ceil(log2(max_k))`` bytes, 2048 bytes per block."""
    aw = max(1, (max(max_k, 1) - 1).bit_length())
    return rows * -(-(2 << aw) // 2048)


def lutram_lut4(depth: int, width_bits: int) -> int:
    """LUT4 of a distributed-RAM memory (ECP5 DPR16X4: 16 x 4 bits in 2 LUT4 + read mux);
    0 for memories that go to block RAM (:func:`dp16kd_for`)."""
    if depth <= 0 or width_bits <= 0 or depth > LUTRAM_MAX_DEPTH:
        return 0
    return 2 * ceil(depth / 16) * ceil(width_bits / 4) + width_bits


# --- cycle formulas ------------------------------------------------------------------------------

def seq_cycles(out_c: int) -> int:
    """Sequencer cycles of one executed layer with ``out_c`` output channels."""
    return out_c + SEQ_OVERHEAD


def sa_operand_stages(cols: int) -> int:
    """Register stages from the array's activation registers to its multipliers: a row's
    activation reaches its ``cols`` multipliers through a tree of copies
    (:func:`hwgen.hw.bram.kept_tree_latency`)."""
    return kept_tree_latency(cols)


def sa_layer_cycles(pixels: int, k: int, cout_g: int, groups: int, rows: int,
                    cols: int) -> int:
    """Cycles of one layer on the R x C array (module docstring), sequencer included.

    Parameters
    ----------
    pixels, k, cout_g, groups: the layer as :class:`hwgen.hw.systolic.SystolicLayer` sees it
        (output pixels, reduction per group, output channels per group, groups).
    rows, cols: R and C.
    """
    otiles = -(-cout_g // cols)
    nv_last = cout_g - (otiles - 1) * cols
    gk = groups * k
    tiles = -(-pixels // rows)
    rem = pixels - (tiles - 1) * rows            # rows of the last pixel tile

    extra = sa_operand_stages(cols) - 1          # SA_PIPE, SA_DRAIN_GAP: with one stage
    gap = SA_DRAIN_GAP + extra

    def step(nrows, nv):
        return max(k, nrows + gap, nv + SA_BIAS_GAP)

    def steps(nrows):
        return groups * ((otiles - 1) * step(nrows, cols) + step(nrows, nv_last))

    load0 = (rows if tiles > 1 else rem) * gk
    array = load0
    if tiles > 1:
        array += (tiles - 2) * max(steps(rows), rows * gk)
        array += max(steps(rows), rem * gk)
    array += steps(rem) + rem * nv_last
    writer = load0 + step(min(rows, pixels), min(cols, cout_g)) + pixels * groups * cout_g
    return max(array, writer) + SA_PIPE + extra + seq_cycles(groups * cout_g)


def dw_layer_cycles(c: int, h: int, w: int) -> int:
    """Cycles of one depthwise layer (c channels of h x w) on the one-lane depthwise unit,
    sequencer included."""
    per2 = max(2 * (h * w + DW_CH_OVERHEAD), h * w + DW_LOADER_CYCLES)   # two channels
    return -(-c * per2 // 2) + w + DW_LATENCY + seq_cycles(c)


def maxpool_cycles(c: int, oh: int, ow: int, kh: int, kw: int) -> int:
    """Cycles of a max pool on the serial unit: one output element per ``kh*kw + 3``."""
    return c * oh * ow * (kh * kw + MAXPOOL_EXTRA) + MAXPOOL_LATENCY + seq_cycles(c)


def add_cycles(c: int, h: int, w: int) -> int:
    """Cycles of a residual add on the one-lane add unit: two arena reads per element."""
    return 2 * c * h * w + ADD_LATENCY + seq_cycles(c)


@lru_cache(maxsize=None)
def avg_interval() -> int:
    """Cycles per window of the average-pool unit (hw/pool.py, as the accelerator builds it)."""
    from ..hw.pool import PoolParams
    return PoolParams(lanes=1, max_width=8, max_height=8, max_pool=False, avg_pool=True,
                      global_pool=False).avg_interval


def avgpool_cycles(c: int, ye: int, xe: int, oh: int, ow: int) -> int:
    """Cycles of a 3x3 average pool on the one-lane pool unit: per channel the walk of the
    ``ye x xe`` extended raster or one window per :func:`avg_interval`, whichever is longer."""
    return c * max(ye * xe, oh * ow * avg_interval()) + AVGPOOL_LATENCY + seq_cycles(c)


def pool_extent(h: int, w: int, k: int, stride: int, top: int, left: int, oh: int,
                ow: int) -> tuple[int, int]:
    """(YE, XE): the extended raster the pool unit walks (hw/pool.py ``PoolParams.config``)."""
    return (max(h, (oh - 1) * stride - top + k), max(w, (ow - 1) * stride - left + k))
