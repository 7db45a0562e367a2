"""ULX3S (Radiona) with a Lattice ECP5 12F/25F/45F/85F, 25 MHz oscillator, 32 MB SDRAM.

Budgets are nextpnr-ecp5's device database figures (what place-and-route can use):
LUT4 (TRELLIS_COMB), MULT18X18D, DP16KD (18 Kbit block RAM = 2 KiB at 8-bit width).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Budget:
    lut4: int
    mult18: int
    dp16kd: int
    sdram_bytes: int = 0

    @property
    def bram_bytes(self) -> int:
        """Block RAM at 8-bit width: one DP16KD holds 2048 bytes."""
        return self.dp16kd * 2048


@dataclass(frozen=True)
class Board:
    name: str            # "ulx3s-85f"
    family: str          # "ulx3s"
    device: str          # "85F"
    part: str            # "LFE5U-85F"
    package: str
    nextpnr_device: str  # nextpnr-ecp5 flag
    budget: Budget
    clock_mhz: float = 25.0
    amaranth_platform: str = ""   # class name in amaranth_boards.ulx3s


_SDRAM = 32 * 1024 * 1024

BOARDS: dict[str, Board] = {
    f"ulx3s-{d.lower()}": Board(f"ulx3s-{d.lower()}", "ulx3s", d, f"LFE5U-{d}", "CABGA381",
                                f"--{d[:-1]}k", b, 25.0, f"ULX3S_{d}_Platform")
    for d, b in {
        "12F": Budget(24288, 28, 32, _SDRAM),
        "25F": Budget(24288, 28, 56, _SDRAM),
        "45F": Budget(43848, 72, 108, _SDRAM),
        "85F": Budget(83640, 156, 208, _SDRAM),
    }.items()
}


def get_board(board: str = "ulx3s", device: str | None = None) -> Board:
    """Resolve ``--board ulx3s --device 85F`` or ``--board ulx3s-85f`` (default device 85F)."""
    name = board.lower()
    if name in BOARDS:
        if device and BOARDS[name].device != device.upper():
            raise ValueError(f"--board {board} already names device {BOARDS[name].device}, "
                             f"but --device {device} was given")
        return BOARDS[name]
    if name == "ulx3s":
        key = f"ulx3s-{(device or '85F').lower()}"
        if key not in BOARDS:
            raise ValueError(f"unknown ULX3S device '{device}': choose 12F, 25F, 45F or 85F")
        return BOARDS[key]
    raise ValueError(f"unknown board '{board}': choose ulx3s (with --device 12F|25F|45F|85F) "
                     f"or one of {', '.join(BOARDS)}")
