"""hwgen: compile lightweight CNNs into int8 accelerators for small ECP5 FPGA boards."""

__version__ = "0.1.0"
