"""Board data: devices, resource budgets, clocks. A board is data (see boards/ulx3s.py)."""
from .ulx3s import BOARDS, Budget, Board, get_board

__all__ = ["BOARDS", "Budget", "Board", "get_board"]
