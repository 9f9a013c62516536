"""Privacy accounting against an independent reference (Google's dp-accounting), composition
across rounds, and the ledger's refusal to restart from ε = 0."""

from __future__ import annotations

import json

import pytest
from dp_accounting import dp_event
from dp_accounting.pld import pld_privacy_accountant
from dp_accounting.rdp import rdp_privacy_accountant

from shared_model.config import PrivacyConfig
from shared_model.privacy.accounting import calibrate_noise, epsilon, make_accountant
from shared_model.privacy.ledger import LEDGER_FILE, LedgerError, PrivacyLedger
from shared_model.privacy.plan import open_ledger

GRID = [(0.01, 1.0, 1000, 1e-5), (0.05, 0.8, 200, 1e-5), (0.2, 1.5, 50, 1e-3), (0.004, 1.1, 5000, 1e-6)]


def _event(q: float, sigma: float, steps: int):
    return dp_event.SelfComposedDpEvent(dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(sigma)), steps)


@pytest.mark.parametrize("q,sigma,steps,delta", GRID)
def test_rdp_matches_dp_accounting_within_one_percent(q, sigma, steps, delta):
    reference = rdp_privacy_accountant.RdpAccountant()
    reference.compose(_event(q, sigma, steps))
    assert epsilon("rdp", [(sigma, q, steps)], delta) == pytest.approx(reference.get_epsilon(delta), rel=0.01)


@pytest.mark.parametrize("q,sigma,steps,delta", GRID)
def test_prv_matches_dp_accounting_pld_within_one_percent(q, sigma, steps, delta):
    reference = pld_privacy_accountant.PLDAccountant(value_discretization_interval=1e-4)
    reference.compose(_event(q, sigma, steps))
    assert epsilon("prv", [(sigma, q, steps)], delta) == pytest.approx(reference.get_epsilon(delta), rel=0.01)


def test_the_reference_check_would_catch_a_wrong_sampling_rate():
    reference = rdp_privacy_accountant.RdpAccountant()
    reference.compose(_event(0.01, 1.0, 1000))
    assert epsilon("rdp", [(1.0, 0.0125, 1000)], 1e-5) > 1.05 * reference.get_epsilon(1e-5)


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_rounds_compose_exactly_like_one_accountant_over_all_steps(tmp_path, accountant):
    ledger = PrivacyLedger(accountant, 1e-5, "patient", 100)
    for server_round in range(1, 6):
        ledger.record(1.1, 0.05, 20, {"round": server_round})
        ledger.save(tmp_path / LEDGER_FILE)
        ledger = PrivacyLedger.load(tmp_path / LEDGER_FILE)  # a fresh process every round
    assert ledger.history == [[1.1, 0.05, 100]]
    assert ledger.spent() == epsilon(accountant, [(1.1, 0.05, 100)], 1e-5)
    assert [r["round"] for r in ledger.rounds] == [1, 2, 3, 4, 5]
    assert ledger.rounds[-1]["epsilon"] == ledger.spent()


def test_gdp_is_never_selectable():
    with pytest.raises(ValueError, match="under-report"):
        make_accountant("gdp")


def test_calibrated_noise_spends_the_budget():
    sigma = calibrate_noise("rdp", 4.0, 1e-5, 0.02, 500)
    assert epsilon("rdp", [(sigma, 0.02, 500)], 1e-5) == pytest.approx(4.0, rel=0.01)
    assert epsilon("rdp", [(sigma * 0.9, 0.02, 500)], 1e-5) > 4.0


def test_ledger_missing_after_training_refuses_instead_of_restarting(tmp_path):
    p = PrivacyConfig(mode="dp-sgd")
    assert open_ledger(tmp_path, p, trained_before=False) is None  # a new site starts at ε = 0
    with pytest.raises(LedgerError, match="refusing to train"):
        open_ledger(tmp_path, p, trained_before=True)


def test_ledger_tampered_or_damaged_is_refused(tmp_path):
    path = tmp_path / LEDGER_FILE
    ledger = PrivacyLedger("rdp", 1e-5, "patient", 100)
    ledger.record(1.0, 0.05, 10, {"round": 1})
    ledger.save(path)
    payload = json.loads(path.read_text())
    payload["body"]["history"] = [[1.0, 0.05, 1]]  # someone lowers the steps taken
    path.write_text(json.dumps(payload))
    with pytest.raises(LedgerError, match="checksum"):
        open_ledger(tmp_path, PrivacyConfig(mode="dp-sgd"), trained_before=True)
    path.write_text(path.read_text()[:40])
    with pytest.raises(LedgerError, match="unreadable"):
        PrivacyLedger.load(path)


def test_ledger_under_other_settings_is_refused(tmp_path):
    ledger = PrivacyLedger("rdp", 1e-5, "patient", 100)
    ledger.save(tmp_path / LEDGER_FILE)
    with pytest.raises(LedgerError, match="unit"):
        open_ledger(tmp_path, PrivacyConfig(mode="dp-sgd", unit="image"), trained_before=True)
    with pytest.raises(LedgerError, match="accountant"):
        open_ledger(tmp_path, PrivacyConfig(mode="dp-sgd", accountant="prv"), trained_before=True)
