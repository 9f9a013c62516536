"""Privacy accounting of Poisson-subsampled Gaussian mechanisms (DP-SGD steps) with Opacus'
accountants: RDP (Mironov 2017; Mironov, Talwar, Zhang 2019) or PRV (Gopi, Lee, Wutschitz 2021).

A history is a list of ``(noise_multiplier, sample_rate, steps)`` entries, as Opacus keeps it.
Opacus' GDP accountant is deliberately not offered: its CLT approximation can under-report ε.
"""

from __future__ import annotations

from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.accountants.accountant import IAccountant
from opacus.accountants.utils import get_noise_multiplier

ACCOUNTANTS = {"rdp": RDPAccountant, "prv": PRVAccountant}

History = list[tuple[float, float, int]]


def make_accountant(name: str, history: History | None = None) -> IAccountant:
    """An Opacus accountant of kind ``name`` that has already composed ``history``."""
    if name not in ACCOUNTANTS:
        hint = " (GDP can under-report ε and is not offered)" if name == "gdp" else ""
        raise ValueError(f"privacy.accountant must be one of {sorted(ACCOUNTANTS)}, got {name!r}{hint}")
    accountant = ACCOUNTANTS[name]()
    accountant.history = [(float(s), float(q), int(n)) for s, q, n in (history or []) if n > 0]
    return accountant


def epsilon(name: str, history: History, delta: float) -> float:
    """ε(δ) spent by ``history`` (0 for an empty history)."""
    if not any(n > 0 for _, _, n in history):
        return 0.0
    return float(make_accountant(name, history).get_epsilon(delta))


def calibrate_noise(name: str, epsilon_budget: float, delta: float, sample_rate: float, steps: int,
                    fixed: History = ()) -> float:
    """The smallest noise multiplier whose ``steps`` steps at ``sample_rate`` spend
    ``epsilon_budget``, composed with the ``fixed`` mechanisms (e.g. a one-off release)."""
    if not fixed:
        return float(get_noise_multiplier(target_epsilon=epsilon_budget, target_delta=delta, sample_rate=sample_rate,
                                          steps=steps, accountant=name, epsilon_tolerance=0.005))
    if epsilon(name, list(fixed), delta) >= epsilon_budget:
        raise ValueError(f"the fixed mechanisms alone spend ε >= {epsilon_budget:g}: no budget left for training")
    low, high = 0.0, 10.0
    while epsilon(name, [*fixed, (high, sample_rate, steps)], delta) > epsilon_budget:
        low, high = high, 2 * high
    while high - low > 1e-3 * high:  # bisection, as Opacus' get_noise_multiplier
        middle = (low + high) / 2
        if epsilon(name, [*fixed, (middle, sample_rate, steps)], delta) > epsilon_budget:
            low = middle
        else:
            high = middle
    return high
