"""``privacy.md`` of a federated run: for a privacy officer, what left each site in every round
and what it cost — site-level DP-SGD settings and ε(δ) so far, client-level DP at the coordinator,
secure aggregation, transport — plus what these guarantees do not cover. Rewritten atomically
after every round from the state stored in the round checkpoints."""

from __future__ import annotations

from pathlib import Path

from shared_model.atomic_files import write_text_atomic
from shared_model.config import FederationAppConfig

REPORT_FILE = "privacy.md"

CAVEATS = """## What these guarantees cover — and what they do not

- **Site-level DP-SGD** bounds what the released model updates reveal about one *privacy unit*
  at a site: one patient (all of that patient's images) with `unit=patient`, one image with
  `unit=image`. An image-level ε says nothing about a patient with several images: for such a
  patient it can be several times larger. ε is per site; sites do not share budgets.
- ε is cumulative over every round this site ever trained under its ledger, at the δ shown.
  It covers the model weights the site sends. Under DP-SGD a site does not report its training
  losses or how many images its Poisson batches held (neither is privatised). The number of
  records (`num-examples`), the count of unreadable images and round times are sent in the
  clear and are not covered, nor are federated-evaluation scores on a site's test split
  (`strategy.fraction_evaluate=0` sends none).
- **Client-level DP** (coordinator) bounds what the aggregate reveals about one *site's whole
  contribution*; it protects nothing inside an update against the coordinator itself, which
  sees each update before clipping unless SecAgg+ is on (the two cannot be combined here).
- **Secure aggregation** hides individual updates from the coordinator (it learns their sum
  only) under an honest-but-curious coordinator and fewer than `threshold` colluding sites; it
  adds no noise and gives no DP guarantee by itself.
- **TLS** protects updates in transit and authenticates the coordinator to the sites;
  registered site keys authenticate sites to the coordinator.
- Noise comes from a non-cryptographic RNG with an unpredictable seed (see *Noise RNG*); the
  floating-point attacks that Opacus' secure mode defends against are not excluded.
"""


def _fmt(value, spec: str = ".4g") -> str:
    return format(value, spec) if isinstance(value, (int, float)) else str(value if value is not None else "—")


def render_privacy_report(cfg: FederationAppConfig, privacy: dict) -> str:
    """The Markdown report from the run config and the checkpointed privacy state."""
    p, rounds = cfg.privacy, privacy.get("rounds", [])
    central = privacy.get("central") or {}
    secagg = (f"SecAgg+ on: threshold {cfg.secagg.threshold or 'majority'}, deltas clipped to "
              f"±{cfg.secagg.clipping_range:g}, quantisation step "
              f"{2 * cfg.secagg.clipping_range / cfg.secagg.quantization_range:.3g}"
              if cfg.secagg.enabled else "off (the coordinator sees each site's update)")
    site_dp = (f"DP-SGD (Opacus), unit **{p.unit}**, clipping C={p.max_grad_norm:g}, accountant {p.accountant}, "
               f"budget ε={p.epsilon_budget:g} per site" if p.mode == "dp-sgd" else "off")
    clip = (f"{p.central_clip:g}" if p.central == "fixed" else
            f"{p.central_clip:g} at first, {_fmt(central.get('clipping_norm'))} for the next round")
    central_line = (f"{p.central} clipping, noise multiplier {p.central_noise_multiplier:g}, clip {clip}, "
                    f"δ={_fmt(central.get('delta'))}, ε so far {_fmt(central.get('epsilon'))}"
                    if p.central != "none" else "off")
    rng = next((s.get("rng") for r in rounds for s in r.get("sites", {}).values() if s.get("rng")), "—")
    lines = [f"# Privacy report — {cfg.run_dir}", "",
             "What left each site in every round, and what it cost. Rewritten after every round.", "",
             "| setting | value |", "|---|---|",
             f"| Site-level DP | {site_dp} |", f"| Client-level DP (coordinator) | {central_line} |",
             f"| Secure aggregation | {secagg} |", f"| Transport | {cfg.federation.transport} |",
             f"| Noise RNG | {rng} |",
             f"| Model changes for DP-SGD | {'<br>'.join(privacy.get('model_fixes') or []) or 'none'} |", "",
             "## Per round and site", "",
             "| round | site | mode | unit | C | σ | q | steps (total) | ε so far | δ | secagg | transport |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for record in rounds:
        for name, s in sorted(record.get("sites", {}).items()):
            lines.append(f"| {record['round']} | {name} | {s.get('mode', 'none')} | {s.get('unit', '—')} | "
                         f"{_fmt(s.get('max-grad-norm'))} | {_fmt(s.get('noise-multiplier'))} | "
                         f"{_fmt(s.get('sample-rate'))} | {_fmt(s.get('steps-total'))} | {_fmt(s.get('epsilon'))} | "
                         f"{_fmt(s.get('delta'))} | {'on' if cfg.secagg.enabled else 'off'} | "
                         f"{cfg.federation.transport} |")
    if cfg.secagg.enabled:
        lines += ["", "## Secure aggregation per round", "",
                  "| round | sites unmasked | dropped (setup / share keys / masked vectors / unmask) "
                  "| quantisation step |",
                  "|---|---|---|---|"]
        for r in rounds:
            s = r.get("secagg") or {}
            dropped = s.get("dropped", {})
            lines.append(f"| {r['round']} | {_fmt(s.get('survivors'))} | "
                         + " / ".join(str(dropped.get(k, "—")) for k in
                                      ("setup", "share_keys", "collect_masked_vectors", "unmask"))
                         + f" | {_fmt(s.get('quantisation-step'))} |")
        lines += ["", "Each site's delta is clipped to ±clipping range per coordinate (the share of clipped "
                  "coordinates is in its metrics, `secagg-clipped-fraction`) and stochastically rounded to the "
                  "quantisation grid: the unmasked mean differs from the exact mean by less than one step."]
    if p.central != "none":
        lines += ["", "## Client-level DP per round", "", "| round | sites aggregated | ε so far |", "|---|---|---|"]
        lines += [f"| {r['round']} | {r.get('central_sites', '—')} | {_fmt(r.get('central_epsilon'))} |"
                  for r in rounds]
    return "\n".join(lines) + "\n\n" + CAVEATS


def write_privacy_report(run_dir: Path, cfg: FederationAppConfig, privacy: dict) -> Path:
    """Write ``RUN_DIR/privacy.md`` atomically."""
    path = run_dir / REPORT_FILE
    write_text_atomic(path, render_privacy_report(cfg, privacy))
    return path
