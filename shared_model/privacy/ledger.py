"""The privacy ledger: a site's cumulative DP-SGD history, persisted on the site's own disk.

Every step a site ever took under DP-SGD is in the ledger, across rounds, runs of the trainer
and process restarts, so ε is always that of one accountant over all steps. The file carries a
SHA-256 of its body; a ledger that is missing where one must exist, unreadable, tampered with or
written for another accountant/δ/unit stops training (:class:`LedgerError`) — a site never
silently restarts from ε = 0.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from shared_model.atomic_files import write_text_atomic
from shared_model.privacy.accounting import History, epsilon

FORMAT = "retinafl-privacy-ledger/1"
LEDGER_FILE = "privacy_ledger.json"


class LedgerError(RuntimeError):
    """The ledger cannot be trusted or does not match the run: the site must not train."""


@dataclass
class PrivacyLedger:
    """What a site has spent: accountant, δ, unit and the composed (σ, q, steps) history."""

    accountant: str
    delta: float
    unit: str
    units: int  # N, the number of privacy units the sampling rate refers to
    history: list[list[float]] = field(default_factory=list)  # [noise_multiplier, sample_rate, steps]
    rounds: list[dict] = field(default_factory=list)  # per round: round, steps, epsilon

    def spent(self, extra: History = ()) -> float:
        """ε(δ) of the history, plus ``extra`` steps not yet taken."""
        return epsilon(self.accountant, self._composed(extra), self.delta)

    def _composed(self, extra: History = ()) -> History:
        merged: History = [tuple(entry) for entry in self.history]
        for sigma, rate, steps in extra:
            if steps <= 0:
                continue
            if merged and merged[-1][0] == sigma and merged[-1][1] == rate:
                merged[-1] = (sigma, rate, int(merged[-1][2]) + int(steps))
            else:
                merged.append((float(sigma), float(rate), int(steps)))
        return merged

    def record(self, noise_multiplier: float, sample_rate: float, steps: int, label: dict) -> float:
        """Add ``steps`` steps to the history (merged as Opacus' accountants merge) and return ε."""
        self.history = [list(entry) for entry in self._composed([(noise_multiplier, sample_rate, steps)])]
        spent = self.spent()
        self.rounds.append({**label, "steps": int(steps), "epsilon": spent})
        return spent

    @property
    def total_steps(self) -> int:
        return int(sum(entry[2] for entry in self.history))

    # --- persistence -------------------------------------------------------------------------
    def save(self, path: Path) -> None:
        """Write atomically with the SHA-256 of the body (a crash never leaves half a ledger)."""
        body = asdict(self)
        payload = {"format": FORMAT, "body": body, "sha256": _digest(body)}
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps(payload, indent=1) + "\n")

    @classmethod
    def load(cls, path: Path) -> PrivacyLedger:
        """Read and verify a ledger; any doubt raises :class:`LedgerError` naming the file."""
        try:
            payload = json.loads(path.read_text())
            body = payload["body"]
            if payload.get("format") != FORMAT:
                raise LedgerError(f"{path}: format {payload.get('format')!r}, expected {FORMAT!r}")
            if payload.get("sha256") != _digest(body):
                raise LedgerError(f"{path}: checksum mismatch — the ledger was altered or damaged")
            return cls(**body)
        except LedgerError:
            raise
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise LedgerError(f"{path}: unreadable privacy ledger ({exc})") from exc

    def check_matches(self, path: Path, accountant: str, delta: float, unit: str) -> None:
        """Refuse to continue a ledger under a different accountant, δ or privacy unit."""
        wanted = {"accountant": accountant, "delta": delta, "unit": unit}
        have = {"accountant": self.accountant, "delta": self.delta, "unit": self.unit}
        diff = [f"{k}: ledger {have[k]!r}, config {wanted[k]!r}" for k in wanted if have[k] != wanted[k]]
        if diff:
            raise LedgerError(f"{path}: the ledger was written under other privacy settings ({'; '.join(diff)}); "
                              "ε composes only under one accountant, δ and unit — keep the settings "
                              "or start a new site state directory deliberately")


def _digest(body: dict) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
