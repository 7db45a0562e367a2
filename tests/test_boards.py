import pytest

from boards import get_board


def test_ulx3s_devices_and_budgets():
    assert get_board("ulx3s").device == "85F"
    b = get_board("ulx3s", "45F").budget
    assert (b.lut4, b.mult18, b.dp16kd) == (43848, 72, 108)
    assert get_board("ulx3s-85f").budget.bram_bytes == 416 * 1024
    assert get_board("ulx3s-12f").budget.bram_bytes == 64 * 1024
    assert get_board("ULX3S", "25f").budget.mult18 == 28


def test_bad_board_names():
    with pytest.raises(ValueError, match="unknown board 'de10'"):
        get_board("de10")
    with pytest.raises(ValueError, match="12F, 25F, 45F or 85F"):
        get_board("ulx3s", "100F")
    with pytest.raises(ValueError, match="already names device"):
        get_board("ulx3s-12f", "85F")


def test_amaranth_platform_exists():
    from amaranth_boards import ulx3s
    for d in ("12F", "25F", "45F", "85F"):
        assert hasattr(ulx3s, get_board("ulx3s", d).amaranth_platform)
