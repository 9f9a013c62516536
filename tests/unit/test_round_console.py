"""What a coordinator reads at 80 columns: a round's line breaks between fields, never inside
one, and the final table shows every site name, set name and figure uncut."""

from __future__ import annotations

from rich.console import Console

from server.launch import round_table
from server.round_log import round_row

SETS = {"odir_val/CFP": {"aca": 0.621}, "heldout/CFP": {"aca": 0.5}, "heldout/OCT": {"aca": 0.41}}


def _record(n: int, sites: int, sets: dict, seconds: float | None = 1234.0) -> dict:
    return {"round": n, "sites": {f"hospital-{chr(97 + k)}": {"loss.total": 7.1234 + k} for k in range(sites)},
            "server_eval": sets, "federated_eval": {"zero-shot-aca": 0.6}, "bytes_sent": 2 ** 27,
            "bytes_received": 2 ** 27, "seconds": seconds}


def test_a_round_line_that_fits_stays_one_line():
    line = round_row(_record(1, 3, {"heldout/CFP": {"aca": 0.091}, "heldout/OCT": {"aca": 0.1}}), 42.0)
    assert line == "round 1  loss 7.123 / 8.123 / 9.123  ACA CFP 0.091  OCT 0.100  42 s  256 MiB"


def test_a_long_round_line_breaks_between_fields_within_80_columns():
    text = round_row(_record(2, 5, SETS), None)
    lines = text.splitlines()
    assert len(lines) == 2 and all(len(line) <= 80 for line in lines)
    assert lines[0].startswith("round 2  loss 7.123 / 8.123") and lines[1].startswith("    ")
    for field in ("odir_val/CFP 0.621", "heldout/CFP 0.500", "heldout/OCT 0.410", "– s", "256 MiB"):
        assert sum(field in line for line in lines) == 1  # whole, on one line


def test_the_final_table_fits_80_columns_with_nothing_cut():
    console = Console(width=80, record=True)
    console.print(round_table([_record(1, 5, SETS), _record(2, 5, SETS, seconds=None)]))
    text = console.export_text()
    assert "…" not in text and max(len(line) for line in text.splitlines()) <= 80
    for cell in ("hospital-e 11.123", "odir_val/CFP 0.621", "heldout/OCT 0.410", "zero-shot ACA", "256"):
        assert cell in text
