import pytest

from lrlora.schedules import allowance, temperature


def test_temperature_is_a_pure_monotone_schedule():
    for shape in ("cosine", "linear", "exp"):
        taus = [temperature(s, 100, 1.0, 0.05, shape) for s in range(0, 121, 10)]
        assert taus[0] == pytest.approx(1.0) and taus[10] == pytest.approx(0.05)
        assert all(a >= b for a, b in zip(taus, taus[1:], strict=False))
        assert taus[-1] == pytest.approx(0.05)  # held after the end


def test_allowance_holds_decays_cubically_then_holds():
    at = [allowance(s, 100, 1000.0, 400.0, 0.1, 0.6) for s in range(101)]
    assert at[0] == at[10] == 1000.0
    assert at[60] == at[100] == 400.0
    assert all(a >= b for a, b in zip(at, at[1:], strict=False))
    assert at[35] == pytest.approx(400 + 600 * 0.5**3)
    assert allowance(50, 100, 300.0, 400.0, 0.1, 0.6) == 400.0  # never above a larger target
