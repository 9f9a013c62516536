"""``report.html``: one self-contained page per run folder (centralized, simulated or deployed
federation, generator training, synthetic corpus), rebuilt from the folder's files alone.

It shows what a coordinator checks after a run: loss terms per site over rounds (per step for
a single trainer), the aggregate zero-shot ACA over rounds, ε over rounds, bytes moved per
round, the last evaluation's table and confusion matrices, a grid of synthetic samples and the
memorisation audit when the folder holds a corpus, then ``privacy.md`` and the resolved config.
Plots are inline SVG and images ``data:`` URIs; the page's Content-Security-Policy forbids
every request, so opening it (at a hospital, offline, from an e-mail) fetches nothing."""

from __future__ import annotations

import base64
import csv
import html
import json
import logging
import time
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import yaml

import shared_model
from shared_model import wire
from shared_model.atomic_files import write_text_atomic
from shared_model.losses.objective import term_status
from shared_model.reporting.metrics_log import read_metrics
from shared_model.reporting.plots import figure_svg, grouped_bars, image_grid_png, line_panels

log = logging.getLogger(__name__)

REPORT_FILE = "report.html"
SAMPLES_SHOWN = 16
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"
STYLE = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#1b1f24;padding:0 1em}
h1{font-size:1.5em}h2{font-size:1.15em;border-bottom:1px solid #d0d7de;padding-bottom:.2em;margin-top:1.8em}
table{border-collapse:collapse;font-size:.9em;margin:.5em 0}td,th{border:1px solid #d0d7de;padding:.25em .6em;
text-align:left}th{background:#f6f8fa}figure{margin:.8em 0}figcaption{font-size:.85em;color:#57606a}
svg{max-width:100%;height:auto}pre{background:#f6f8fa;padding:.8em;overflow:auto;font-size:.8em}
.note{color:#57606a;font-size:.9em}.fail{color:#b42318;font-weight:bold}.pass{color:#067647;font-weight:bold}
"""
# Marks the page once every plot and image has rendered, so a headless browser can check it.
CHECK_SCRIPT = """
window.addEventListener("load", () => {
  const plots = document.querySelectorAll("figure.plot svg").length;
  const images = [...document.querySelectorAll("figure.plot img")];
  document.body.dataset.plots = plots;
  document.body.dataset.images = images.length;
  document.body.dataset.imagesDecoded = images.filter(i => i.complete && i.naturalWidth > 0).length;
});
"""


def _e(value) -> str:
    return html.escape(str(value))


def _table(headers: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _figure(plot_id: str, svg: str, caption: str) -> str:
    return f'<figure class="plot" id="{plot_id}">{svg}<figcaption>{_e(caption)}</figcaption></figure>'


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except json.JSONDecodeError:
        log.warning("%s is not valid JSON: left out of the report", path)
        return None


def run_kind(run_dir: Path, config: dict, records: list[dict]) -> str:
    """``federated`` | ``generator`` | ``corpus`` | ``centralized``, from the folder's files."""
    if "federation" in config or any("round" in r for r in records):
        return "federated"
    if (run_dir / "corpus.json").is_file():
        return "corpus"
    if "generator" in config:
        return "generator"
    return "centralized"


def _loss_terms(metrics: dict) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if k.startswith("loss") and isinstance(v, (int, float))}


def _round_sections(records: list[dict]) -> list[str]:
    rounds = [r for r in records if "round" in r]
    if not rounds:
        return ["<p class='note'>No round has completed yet.</p>"]
    parts = []
    panels: dict[str, dict] = defaultdict(lambda: defaultdict(lambda: ([], [])))
    epsilon: dict[str, tuple[list, list]] = defaultdict(lambda: ([], []))
    for r in rounds:
        for site, metrics in r.get("sites", {}).items():
            for term, value in _loss_terms(metrics).items():
                xs, ys = panels[term][site]
                xs.append(r["round"])
                ys.append(value)
            if "epsilon" in metrics:
                epsilon[site][0].append(r["round"])
                epsilon[site][1].append(metrics["epsilon"])
        if r.get("central_epsilon") is not None:
            epsilon["central (client-level DP)"][0].append(r["round"])
            epsilon["central (client-level DP)"][1].append(r["central_epsilon"])
    parts.append("<h2>Loss terms per site</h2>")
    if panels:
        parts.append(_figure("loss-per-site", line_panels(panels, "round"),
                             "Each site's mean of each loss term over the local steps of a round that computed "
                             "it; a term a site did not compute in a round has no point there."))
    else:
        parts.append("<p class='note'>Sites sent no losses (under DP-SGD losses are not privatised, so they "
                     "stay at the sites).</p>")
    aca: dict[str, tuple[list, list]] = defaultdict(lambda: ([], []))
    for r in rounds:
        for name, values in (r.get("server_eval") or {}).items():
            if values.get("aca") is not None:
                aca[f"server: {name}"][0].append(r["round"])
                aca[f"server: {name}"][1].append(values["aca"])
        federated = (r.get("federated_eval") or {}).get(wire.ZERO_SHOT_ACA)
        if federated is not None:
            aca["sites' own test rows"][0].append(r["round"])
            aca["sites' own test rows"][1].append(federated)
    parts.append("<h2>Aggregate zero-shot ACA</h2>")
    if aca:
        parts.append(_figure("aca-over-rounds", line_panels({"zero-shot balanced accuracy": aca}, "round"),
                             "The aggregate scored by the common evaluator (FLAIR prompt ensembles, balanced "
                             "accuracy), on the coordinator's sets and on the sites' test rows."))
    else:
        parts.append("<p class='note'>No evaluation in these rounds.</p>")
    if epsilon:
        parts.append("<h2>Privacy loss ε</h2>")
        parts.append(_figure("epsilon-over-rounds", line_panels({"ε spent so far": epsilon}, "round"),
                             "Per site: the site's own DP-SGD accountant; central: the coordinator's accountant."))
    parts.append("<h2>Bytes per round</h2>")
    xs = [r["round"] for r in rounds]
    parts.append(_figure("bytes-per-round", grouped_bars(
        xs, {"sent to sites": [r.get("bytes_sent", 0) / 2 ** 20 for r in rounds],
             "received from sites": [r.get("bytes_received", 0) / 2 ** 20 for r in rounds]}, "round", "MiB"),
        "Model bytes the coordinator sent and received each round."))
    rejected = [(r["round"], reason) for r in rounds for reason in r.get("rejected", [])]
    rejected += [(r["round"], r["evaluation_skipped"]) for r in rounds if r.get("evaluation_skipped")]
    if rejected:
        parts += ["<h2>Rejected updates and skipped evaluations</h2>",
                  _table(["round", "reason"], sorted(rejected, key=lambda row: row[0]))]
    return parts


def _objective_section(config: dict, records: list[dict], run_dir: Path) -> list[str]:
    """Which EyeCLIP terms ran (and why the others are off) and how many anchors found a partner
    of another modality of the same eye, per site (summed over rounds) or for the run."""
    if "loss" not in config:
        return []
    loss = SimpleNamespace(**config["loss"])
    status = term_status(loss, config.get("data", {}).get("pair_modalities", True),
                         config.get("model", {}).get("mae", {}).get("enabled", True),
                         config.get("privacy", {}).get("mode") == "dp-sgd")
    parts = ["<h2>Objective</h2>", _table(["term", "weight", "status"],
                                          [[name, getattr(loss, name), state] for name, state in status.items()])]
    if status["image_image"] != "on":
        return parts
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for r in records:
        for site, metrics in r.get("sites", {}).items():
            if "anchors" in metrics:
                counts[site][0] += int(metrics["anchors"])
                counts[site][1] += int(metrics.get("paired-anchors", 0))
    summary = _read_json(run_dir / "train_summary.json") or {}
    if "anchors" in summary:
        counts["this run"] = [int(summary["anchors"]), int(summary.get("paired", 0))]
    if counts:
        rows = [[site, f"{a:,}", f"{p:,}", f"{p / a:.0%}" if a else "–"] for site, (a, p) in counts.items()]
        parts += [_table(["cross-modality pairs", "anchors trained", "with a partner", "share"], rows),
                  "<p class='note'>An anchor's partner is another modality of the same patient and eye "
                  f"(data.pair_by={_e(config.get('data', {}).get('pair_by', 'eye'))}), from any of the site's "
                  "manifests; a batch with fewer than two pairs computes no cross-modality term.</p>"]
    return parts


def _step_sections(records: list[dict]) -> list[str]:
    steps = [r for r in records if "step" in r]
    if not steps:
        return ["<p class='note'>No training step logged yet.</p>"]
    panels: dict[str, dict] = {}
    for term in dict.fromkeys(t for r in steps for t in _loss_terms(r)):
        points = [(r["step"], r[term]) for r in steps if term in r]
        panels[term] = {"train": ([p[0] for p in points], [p[1] for p in points])}
    speed = [(r["step"], r["images_per_s"]) for r in steps if "images_per_s" in r]
    if speed:
        panels["images/s"] = {"train": ([p[0] for p in speed], [p[1] for p in speed])}
    return ["<h2>Training curves</h2>",
            _figure("loss-per-step", line_panels(panels, "step"), "Loss terms logged every train.log_every steps.")]


def _evaluation_section(run_dir: Path) -> list[str]:
    from shared_model.eval.report import CLASSIFICATION_HEADERS, classification_rows, confusion_figure

    results = _read_json(run_dir / "eval" / "metrics.json")
    if not results:
        return []
    meta = results.get("meta", {})
    where = f"round {meta['round']}" if "round" in meta else f"step {meta['step']}" if "step" in meta else ""
    parts = [f"<h2>Last evaluation {_e(where)}</h2>",
             _table(list(CLASSIFICATION_HEADERS), classification_rows(results))]
    for dataset, entry in results.get("zero_shot", {}).items():
        if "confusion_matrix" in entry:
            fig = confusion_figure(entry["confusion_matrix"], entry["class_names"], f"zero-shot: {dataset}")
            parts.append(_figure(f"confusion-{dataset}", figure_svg(fig),
                                 f"Zero-shot confusion matrix on {dataset} (colour: fraction of the true class)."))
    return parts


def _corpus_folders(run_dir: Path) -> list[Path]:
    if (run_dir / "corpus.json").is_file():
        return [run_dir]
    return sorted(p.parent for p in run_dir.glob("*/corpus.json"))


def _corpus_section(folder: Path, run_dir: Path) -> list[str]:
    with open(folder / "manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))[:SAMPLES_SHOWN]
    name = "this corpus" if folder == run_dir else folder.name
    parts = [f"<h2>Synthetic samples: {_e(name)}</h2>"]
    if rows:
        png = image_grid_png([folder / r["image"] for r in rows],
                             [f"{r['modality']} {r['labels'] or 'normal'}" for r in rows])
        parts.append(f'<figure class="plot" id="samples-{_e(folder.name)}"><img alt="synthetic samples" '
                     f'src="data:image/png;base64,{base64.b64encode(png).decode()}">'
                     f"<figcaption>The first {len(rows)} images of the corpus with their conditions.</figcaption>"
                     "</figure>")
    audit = _read_json(folder / "audit.json")
    if audit is None:
        parts.append("<p class='note'>Not audited yet: run <code>retina-synth audit</code> before export.</p>")
    else:
        verdict = "<span class='pass'>passed</span>" if audit.get("passed") else "<span class='fail'>FAILED</span>"
        rows = [[space, f"{audit[space]['near_copy_fraction']:.3f}", f"{audit[space]['threshold']:.4f}",
                 f"{audit[space]['closer_to_train_fraction']:.3f}"]
                for space in ("pixel", "embedding") if audit.get(space)]
        parts += [f"<p>Memorisation audit {verdict}.</p>",
                  _table(["space", "near-copy fraction", "threshold", "closer to train"], rows)]
    return parts


def build_report(run_dir: str | Path) -> str:
    """The HTML of ``run_dir``'s report."""
    run_dir = Path(run_dir)
    config_text = (run_dir / "config.yaml").read_text() if (run_dir / "config.yaml").is_file() else ""
    config = yaml.safe_load(config_text) or {}
    records = read_metrics(run_dir)
    kind = run_kind(run_dir, config, records)
    facts = [["kind", kind], ["folder", run_dir.resolve()], ["retinafl", shared_model.__version__],
             ["written", time.strftime("%Y-%m-%d %H:%M:%S %Z")]]
    if "model" in config:
        facts.append(["model", config["model"].get("name", "")])
    if kind == "federated":
        facts += [["task", config.get("task", "foundation")], ["strategy", config.get("strategy", {}).get("name", "")],
                  ["rounds done / planned", f"{sum('round' in r for r in records)} / "
                                            f"{config.get('federation', {}).get('rounds', '?')}"]]
    if "privacy" in config:
        facts.append(["privacy", f"{config['privacy'].get('mode', 'none')}, "
                                 f"central {config['privacy'].get('central', 'none')}"])
    parts = [f"<h1>RetinaFL run report: {_e(run_dir.name)}</h1>", _table(["", ""], facts)]
    if kind in ("federated", "centralized"):
        parts += _objective_section(config, records, run_dir)
    if kind == "federated":
        parts += _round_sections(records)
    elif kind in ("centralized", "generator"):
        parts += _step_sections(records)
    parts += _evaluation_section(run_dir)
    for folder in _corpus_folders(run_dir):
        parts += _corpus_section(folder, run_dir)
    if (run_dir / "privacy.md").is_file():
        parts += ["<h2>Privacy</h2>", f"<pre>{_e((run_dir / 'privacy.md').read_text())}</pre>"]
    if config_text:
        parts += ["<h2>Resolved configuration</h2>", f"<details><summary>config.yaml</summary><pre>{_e(config_text)}"
                  "</pre></details>"]
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<meta http-equiv='Content-Security-Policy' content=\"{CSP}\">"
            f"<title>RetinaFL — {_e(run_dir.name)}</title><style>{STYLE}</style><script>{CHECK_SCRIPT}</script>"
            f"</head><body>{''.join(parts)}</body></html>\n")


def write_run_report(run_dir: str | Path) -> Path:
    """Write ``run_dir/report.html`` atomically (a reader never sees half a page)."""
    path = Path(run_dir) / REPORT_FILE
    write_text_atomic(path, build_report(run_dir))
    return path


def refresh_report(run_dir: str | Path) -> None:
    """Rewrite the report during a run; a failure to draw it is logged, never stops training."""
    try:
        write_run_report(run_dir)
    except (OSError, ValueError, KeyError, yaml.YAMLError) as exc:
        log.warning("report.html of %s not updated: %s", run_dir, exc)
