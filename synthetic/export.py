"""Exporting an audited corpus: images, manifest, audit figures and a ``DATASET_CARD.md`` with
its provenance (generator, sampling, ε when the generator was trained with DP-SGD). A corpus
whose audit failed — or that changed after its audit — is refused unless ``--force`` comes with
a reason, which the card records."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from shared_model.atomic_files import write_text_atomic
from shared_model.model.checkpoint import sha256_file
from synthetic.audit import AUDIT_FILE, PAIRS_FILE
from synthetic.sampling import CORPUS_FILE, MANIFEST, read_corpus

CARD = "DATASET_CARD.md"


class ExportRefused(RuntimeError):
    """The corpus may not leave the site as it is."""


def _failures(audit: dict) -> list[str]:
    failed = []
    for space in ("pixel", "embedding"):
        s = audit.get(space)
        if s and not s["passed"]:
            failed.append(f"{space} space: near copies {s['near_copy_fraction']:.3f} (max "
                          f"{audit['config']['max_near_copy_fraction']}), closer to train "
                          f"{s['closer_to_train_fraction']:.3f} (max {audit['config']['max_closer_to_train']})")
    if not audit["captions"]["passed"]:
        failed.append(f"{len(audit['captions']['captions_with_verbatim_span'])} captions repeat a training report verbatim")
    return failed


def export_corpus(corpus: Path, out: Path, force_reason: str | None = None) -> Path:
    """Copy ``corpus`` to ``out`` with its card; returns the card's path."""
    audit_path = corpus / AUDIT_FILE
    if not audit_path.is_file():
        raise ExportRefused(f"{corpus}: no {AUDIT_FILE}; run retina-synth audit first")
    audit = json.loads(audit_path.read_text())
    problems = _failures(audit)
    if audit["manifest_sha256"] != sha256_file(corpus / MANIFEST):
        problems.append(f"{corpus / MANIFEST} changed after the audit")
    if problems and not force_reason:
        raise ExportRefused(f"{corpus}: the audit did not pass — " + "; ".join(problems)
                            + ". Nothing was exported (--force --reason TEXT overrides, and the card records it)")
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty: export into a new folder")
    out.mkdir(parents=True, exist_ok=True)
    shutil.copytree(corpus / "images", out / "images")
    for name in (MANIFEST, AUDIT_FILE, PAIRS_FILE, CORPUS_FILE):
        if (corpus / name).is_file():
            shutil.copy2(corpus / name, out / name)
    card = out / CARD
    write_text_atomic(card, dataset_card(read_corpus(corpus), audit, problems, force_reason))
    return card


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
             f"{corpus['n']} synthetic images with captions, sampled from a conditional diffusion generator. No image in this folder is a patient's image; see the audit below for how close they come.",
             "", "## Provenance", "",
             f"- generator: diffusers UNet2DModel, {generator['generator']}, trained {trained}",
             f"- conditioning categories: {', '.join(generator['categories'])}; modalities: {', '.join(generator['modalities'])}",
             f"- sampling: {corpus['sample']['scheduler']}, {corpus['steps']} steps, guidance {corpus['sample']['guidance']}, "
             f"seed {corpus['sample']['seed']}",
             f"- label mix: {corpus['label_mix']}; modality mix: {corpus['modality_mix']}",
             f"- differential privacy of the generator: {dp}",
             "- captions: built from the conditioning labels with RetinaFL's expert-knowledge dictionary (public text)",
             "", "## Audit", "",
             f"Verdict: **{'passed' if not problems else 'FAILED'}** ({audit['n_synthetic']} synthetic vs "
             f"{audit['n_train']} training and {audit['n_heldout']} held-out real images).", "",
             "| space | near-copy threshold | near-copy share | closer-to-train share (DCR) | median NN distance synthetic / held-out |",
             "|---|---|---|---|---|"]
    for space in ("pixel", "embedding"):
        s = audit.get(space)
        if s:
            lines.append(f"| {space} ({s['metric']}) | {_fmt(s['threshold'])} | {_fmt(s['near_copy_fraction'])} | "
                         f"{_fmt(s['closer_to_train_fraction'])} | {_fmt(s['median_nn_distance_synthetic'])} / "
                         f"{_fmt(s['median_nn_distance_heldout'])} |")
    if "label_fidelity" in audit:
        lines += ["", f"Label fidelity (zero-shot class is a conditioning label): synthetic "
                  f"{_fmt(audit['label_fidelity']['synthetic'])}, held-out real {_fmt(audit['label_fidelity']['heldout_real'])}. "
                  f"Diversity (mean pairwise embedding distance): synthetic {_fmt(audit['diversity']['synthetic'])}, "
                  f"held-out real {_fmt(audit['diversity']['heldout_real'])}."]
    lines += ["", f"Captions sharing a {audit['captions']['verbatim_span_chars']}-character span with a training "
              f"report: {len(audit['captions']['captions_with_verbatim_span'])}.", "",
              f"Closest pairs: `{PAIRS_FILE}`; all figures: `{AUDIT_FILE}`."]
    if problems:
        lines += ["", "## Exported despite a failed audit", "", f"Reason given: {force_reason}", "",
                  *[f"- {p}" for p in problems]]
    return "\n".join(lines) + "\n"
