"""``retina-export`` of a federated run: a kept round's global model, with a card that states how
the federation trained it and what protected the sites' data, read from the round's verified
``server_state.json``. A centralized run folder goes to :func:`shared_model.model.export.export_model`."""

from __future__ import annotations

from pathlib import Path

import yaml

from server.round_checkpoint import ServerState, kept_rounds, round_dir, verify_round
from shared_model.model.export import check_model_checkpoint, export_model, model_card, write_export


def find_round(run_dir: Path, round_number: int | None = None) -> Path:
    """The folder of kept round ``round_number`` (the last by default) of a federated run."""
    rounds = kept_rounds(run_dir)
    if not rounds:
        raise FileNotFoundError(f"{run_dir}: no kept round (checkpoints/round_NNNN/) — not a federated run folder")
    if round_number is None:
        return rounds[-1]
    wanted = round_dir(run_dir, round_number)
    if wanted not in rounds:
        kept = ", ".join(str(int(p.name.removeprefix("round_"))) for p in rounds)
        raise FileNotFoundError(f"{run_dir}: round {round_number} is not kept (kept rounds: {kept})")
    return wanted


def privacy_lines(privacy: dict) -> list[str]:
    """The card's privacy bullets from a run's privacy state (:attr:`ServerState.privacy`): site-level
    DP-SGD with the worst site's ε, client-level DP at the coordinator, secure aggregation, transport."""
    lines = [f"- site-level DP-SGD: {privacy['mode']}"]
    last = privacy["rounds"][-1]["sites"] if privacy["rounds"] else {}
    spent = [s for s in last.values() if "epsilon" in s]
    if spent:
        worst = max(spent, key=lambda s: s["epsilon"])
        lines.append(f"- worst site: ε = {worst['epsilon']:.3f} at δ = {worst['delta']:.3g} per {worst['unit']} "
                     f"({worst['accountant']} accountant, {len(spent)} sites with DP records)")
    central = privacy["central"]
    lines.append(f"- client-level DP at the coordinator: {central['mode']}"
                 + (f", ε = {central['epsilon']:.3f} at δ = {central['delta']:.3g}" if "epsilon" in central else ""))
    secagg = "SecAgg+" if privacy["secagg"] else "off"
    lines.append(f"- secure aggregation: {secagg}; transport: {privacy['transport']}")
    return lines


def _training_line(run_dir: Path, state: ServerState) -> str:
    line = f"federated, {state.round} round{'' if state.round == 1 else 's'} of {state.strategy}"
    path = run_dir / "config.yaml"
    if not path.is_file():
        return line
    config = yaml.safe_load(path.read_text())
    return f"{line} ({config['federation']['min_sites']}+ sites per round, {config['train']['steps']} local steps)"


def export_federated_model(run_dir: str | Path, out: str | Path, round_number: int | None = None) -> Path:
    """Export kept round ``round_number`` (the last by default) of a federated run into the new
    folder ``out``, its weights checked against their recorded hashes; returns ``out``."""
    run_dir, out = Path(run_dir), Path(out)
    folder = find_round(run_dir, round_number)
    meta, digest = check_model_checkpoint(folder)
    state = verify_round(folder)
    card = model_card(run_dir, folder, meta, digest, _training_line(run_dir, state), privacy_lines(state.privacy))
    return write_export(run_dir, folder, out, card)


def export_run(run_dir: str | Path, out: str | Path, round_number: int | None = None) -> Path:
    """Export a run folder's model: a federated run's round, or a centralized run's checkpoint."""
    run_dir = Path(run_dir)
    if kept_rounds(run_dir):
        return export_federated_model(run_dir, out, round_number)
    if round_number is not None:
        raise FileNotFoundError(f"{run_dir}: --round applies to federated run folders (checkpoints/round_NNNN)")
    return export_model(run_dir, out)
