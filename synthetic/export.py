"""Exporting an audited corpus: images, manifest, audit figures and a ``DATASET_CARD.md`` with
its provenance (generator, sampling, ε when the generator was trained with DP-SGD). A corpus
whose audit failed is refused unless ``--force`` comes with a reason, which the card records. A
corpus that is not the one audited — its manifest or any image changed since, an audited image
missing, an image the audit never saw — is always refused (re-run the audit): the copy is made
in a temporary folder beside the destination and checked there against the SHA-256 the audit
recorded for every image, and only a copy that matches becomes the destination."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from shared_model.atomic_files import write_text_atomic
from shared_model.file_digest import sha256_file
from synthetic.audit import AUDIT_FILE, PAIRS_FILE, failures
from synthetic.sampling import CORPUS_FILE, MANIFEST, read_corpus

CARD = "DATASET_CARD.md"
IMAGES = "images"  # the corpus's image folder, the only one exported
SHOWN = 3  # changed files named in a refusal


class ExportRefused(RuntimeError):
    """The corpus may not leave the site as it is."""


def read_audit(corpus: Path) -> dict:
    """The corpus's audit record; refused when there is none, or one without per-image hashes."""
    path = corpus / AUDIT_FILE
    if not path.is_file():
        raise ExportRefused(f"{corpus}: no {AUDIT_FILE}; run retina-synth audit first")
    audit = json.loads(path.read_text())
    if "image_sha256" not in audit:
        raise ExportRefused(f"{path}: records no SHA-256 per image (an audit of an older RetinaFL); "
                            "run retina-synth audit again")
    return audit


def changes_since_audit(folder: Path, audit: dict) -> list[str]:
    """What in ``folder`` (a corpus or its copy) is not what ``audit`` saw, one line per file: the
    manifest, an image whose SHA-256 differs, an audited image missing, an image not audited."""
    changes = []
    if not (folder / MANIFEST).is_file():
        changes.append(f"{MANIFEST}: missing")
    elif sha256_file(folder / MANIFEST) != audit["manifest_sha256"]:
        changes.append(f"{MANIFEST}: changed after the audit")
    recorded = audit["image_sha256"]
    present = {p.relative_to(folder).as_posix() for p in (folder / IMAGES).rglob("*") if p.is_file()}
    for key in sorted(recorded):
        if key not in present:
            changes.append(f"{key}: audited, but missing (or outside {IMAGES}/, which is all export copies)")
        elif sha256_file(folder / key) != recorded[key]:
            changes.append(f"{key}: SHA-256 differs from the audit's (changed after the audit)")
    changes += [f"{key}: not audited (added after the audit)" for key in sorted(present - set(recorded))]
    return changes


def export_corpus(corpus: Path, out: Path, force_reason: str | None = None) -> Path:
    """Copy ``corpus`` to ``out`` with its card; returns the card's path. Nothing is left at
    ``out`` when the export is refused."""
    audit = read_audit(corpus)
    problems = failures(audit)
    if problems and not force_reason:
        raise ExportRefused(f"{corpus}: the audit did not pass — " + "; ".join(problems)
                            + ". Nothing was exported (--force --reason TEXT overrides, and the card records it)")
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty: export into a new folder")
    staging = out.with_name(f".{out.name}.{os.getpid()}.partial")
    staging.mkdir(parents=True)
    try:
        if (corpus / IMAGES).is_dir():
            shutil.copytree(corpus / IMAGES, staging / IMAGES)
        for name in (MANIFEST, AUDIT_FILE, PAIRS_FILE, CORPUS_FILE):
            if (corpus / name).is_file():
                shutil.copy2(corpus / name, staging / name)
        changes = changes_since_audit(staging, audit)  # the copy itself: a file swapped mid-copy counts
        if changes:
            more = f"; and {len(changes) - SHOWN} more" if len(changes) > SHOWN else ""
            raise ExportRefused(f"{corpus}: not the corpus that was audited — {len(changes)} file(s): "
                                + "; ".join(changes[:SHOWN]) + more
                                + ". Nothing was exported: run retina-synth audit again (--force does not apply)")
        write_text_atomic(staging / CARD, dataset_card(read_corpus(corpus), audit, problems, force_reason))
        if out.exists():
            out.rmdir()
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone after the rename; else a refused or failed copy
    return out / CARD


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def dataset_card(corpus: dict, audit: dict, problems: list[str], force_reason: str | None) -> str:
    """The Markdown card: what the corpus is, where it came from, what it cost, how it audited."""
    generator = corpus["generator"]
    extra = generator["extra"]
    trained = f"{extra['step']} steps at one site" if "step" in extra else f"federated, {extra.get('round')} rounds"
    privacy = generator["extra"].get("privacy", {"mode": "none"})
    dp = (f"DP-SGD, unit {privacy['unit']}, ε = {_fmt(privacy['epsilon'])} at δ = {_fmt(privacy['delta'])} "
          f"({privacy['accountant']}, {privacy['steps-total']} steps, C = {_fmt(privacy['max-grad-norm'])}, "
          f"σ = {_fmt(privacy['noise-multiplier'])})" if privacy.get("mode") == "dp-sgd"
          else "none: the generator was trained without differential privacy")
    lines = ["# Synthetic retinal corpus", "",
             f"{corpus['n']} synthetic images with captions, sampled from a conditional diffusion generator. "
             "No image in this folder is a patient's image; see the audit below for how close they come.",
             "", "## Provenance", "",
             f"- generator: diffusers UNet2DModel, {generator['generator']}, trained {trained}",
             f"- conditioning categories: {', '.join(generator['categories'])}; "
             f"modalities: {', '.join(generator['modalities'])}",
             f"- sampling: {corpus['sample']['scheduler']}, {corpus['steps']} steps, "
             f"guidance {corpus['sample']['guidance']}, seed {corpus['sample']['seed']}",
             f"- label mix: {corpus['label_mix']}; modality mix: {corpus['modality_mix']}",
             f"- differential privacy of the generator: {dp}",
             "- captions: built from the conditioning labels with RetinaFL's expert-knowledge dictionary (public text)",
             "", "## Audit", "",
             f"Verdict: **{'passed' if not problems else 'FAILED'}** ({audit['n_synthetic']} synthetic vs "
             f"{audit['n_train']} training and {audit['n_heldout']} held-out real images).", "",
             "| space | near-copy threshold | near-copy share | closer-to-train share (DCR) "
             "| median NN distance synthetic / held-out |",
             "|---|---|---|---|---|"]
    for space in ("pixel", "embedding"):
        s = audit.get(space)
        if s:
            lines.append(f"| {space} ({s['metric']}) | {_fmt(s['threshold'])} | {_fmt(s['near_copy_fraction'])} | "
                         f"{_fmt(s['closer_to_train_fraction'])} | {_fmt(s['median_nn_distance_synthetic'])} / "
                         f"{_fmt(s['median_nn_distance_heldout'])} |")
    if "label_fidelity" in audit:
        lines += ["", f"Label fidelity (zero-shot class is a conditioning label): synthetic "
                  f"{_fmt(audit['label_fidelity']['synthetic'])}, "
                  f"held-out real {_fmt(audit['label_fidelity']['heldout_real'])}. "
                  f"Diversity (mean pairwise embedding distance): synthetic {_fmt(audit['diversity']['synthetic'])}, "
                  f"held-out real {_fmt(audit['diversity']['heldout_real'])}."]
    lines += ["", f"Captions sharing a {audit['captions']['verbatim_span_chars']}-character span with a training "
              f"report: {len(audit['captions']['captions_with_verbatim_span'])}.", "",
              f"Closest pairs: `{PAIRS_FILE}`; all figures and every image's SHA-256 as audited: `{AUDIT_FILE}`."]
    if problems:
        lines += ["", "## Exported despite a failed audit", "", f"Reason given: {force_reason}", "",
                  *[f"- {p}" for p in problems]]
    return "\n".join(lines) + "\n"
