"""``retina-synth``: synthetic corpora from a site's images.

  retina-synth train --manifest site.csv [--manifest ...] [--run-dir runs/synth] [--dp] [--resume] [OVERRIDES]
  retina-synth sample --generator runs/synth --out corpus/ [--n 10000] [--labels "moderate_npdr=0.2,normal=0.5"]
                      [--modalities "CFP=1"] [--scheduler ddim|dpm_solver|ddpm] [--steps 25] [--guidance 2]
  retina-synth audit --corpus corpus/ --generator runs/synth [--checkpoint CLIP_CHECKPOINT]
  retina-synth export --corpus corpus/ --out shareable/ [--force --reason "..."]

``train`` fits the conditional DDPM on the manifests' train rows (DP-SGD with ``--dp``, with the
same accountant, unit and budget rules as the foundation model: ``privacy.*`` overrides), holding
out ``train.holdout_fraction`` of the patients for the audit when the manifests have no val/test
rows; ``sample`` writes images and a manifest with dictionary captions; ``audit`` checks the
corpus against the site's training and held-out images; ``export`` copies an audited corpus with
its dataset card, refuses a failed audit unless forced with a reason, and always refuses a corpus
changed since its audit. OVERRIDES are Hydra overrides of the ``synth`` config (``generator.*``,
``train.*``, ``sample.*``, ``audit.*``, ``privacy.*``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console

from shared_model.conf import compose_app


def _trained_config(run_dir: Path) -> Path:
    """The saved config of a ``retina-synth train`` run folder (the command's overrides go on top)."""
    saved = run_dir / "config.yaml"
    if not saved.is_file():
        raise FileNotFoundError(f"{saved}: not found; --generator needs a folder written by retina-synth train")
    return saved


def _train(args: argparse.Namespace) -> int:
    from synthetic.holdout import HOLDOUT_FILE
    from synthetic.training import train_generator

    manifests = ",".join(str(Path(m).resolve()) for m in args.manifest)
    overrides = [f"data.manifests=[{manifests}]", f"run_dir={Path(args.run_dir).resolve()}",
                 *(["privacy.mode=dp-sgd"] if args.dp else []), *(["resume=true"] if args.resume else []),
                 *args.overrides]
    summary = train_generator(compose_app("synth", overrides))
    console = Console()
    console.print(f"generator at step {summary['step']} in {args.run_dir}", highlight=False)
    loss = summary["loss"]
    if loss:
        console.print(f"loss {loss['first']:.4f} ({_steps(loss['first_steps'])}) -> {loss['last']:.4f} "
                      f"({_steps(loss['last_steps'])}), {summary['images_per_s']:.1f} img/s", highlight=False)
    privacy = summary["privacy"]
    if privacy.get("mode") == "dp-sgd":
        console.print(f"ε={privacy['epsilon']:.3g} at δ={privacy['delta']:.2g} ({privacy['unit']} unit)",
                      highlight=False)
    held = summary["holdout"]
    if held:
        console.print(f"held out for the audit: {held['patients']} patients ({held['rows']} rows), "
                      f"listed in {Path(args.run_dir) / HOLDOUT_FILE}", highlight=False, soft_wrap=True)
    return 0


def _steps(span: list[int]) -> str:
    """``step 20`` or ``steps 20-100``: the logged steps a loss figure averages."""
    return f"step {span[0]}" if span[0] == span[1] else f"steps {span[0]}-{span[1]}"


def _sample(args: argparse.Namespace) -> int:
    from synthetic.generator import GENERATOR_DIR, GENERATOR_FILE, load_generator
    from synthetic.sampling import sample_corpus

    flags = {"n": args.n, "labels": args.labels, "modalities": args.modalities, "scheduler": args.scheduler,
             "steps": args.steps, "guidance": args.guidance, "seed": args.seed}
    overrides = [f"sample.{k}={v!r}" if isinstance(v, str) else f"sample.{k}={v}" for k, v in flags.items()
                 if v is not None] + args.overrides
    source = Path(args.generator)
    if (source / GENERATOR_FILE).is_file():  # a generator folder, e.g. a federated run's round checkpoint
        app, folder = compose_app("synth", overrides), source
    else:  # a retina-synth train run folder
        app, folder = compose_app("synth", overrides, saved=_trained_config(source)), source / GENERATOR_DIR
    model, meta = load_generator(folder, use_ema=app.sample.use_ema)
    manifest = sample_corpus(model, meta, app.sample, Path(args.out), app.train.device)
    Console().print(f"{app.sample.n} images and {manifest} written", highlight=False)
    if app.report.html:
        _refresh_reports(Path(args.out))
    return 0


def _refresh_reports(corpus: Path) -> None:
    """The corpus's own report, and its run folder's when it was sampled into one."""
    from shared_model.reporting.run_report import REPORT_FILE, refresh_report

    refresh_report(corpus)
    if (corpus.parent / REPORT_FILE).is_file():
        refresh_report(corpus.parent)


def _audit(args: argparse.Namespace) -> int:
    from rich.markup import escape

    from synthetic.audit import AUDIT_FILE, run_audit
    from synthetic.holdout import HOLDOUT_FILE

    overrides = ([f"audit.checkpoint={Path(args.checkpoint).resolve()}"] if args.checkpoint else []) + args.overrides
    app = compose_app("synth", overrides, saved=_trained_config(Path(args.generator)))
    result = run_audit(Path(args.corpus), app.data, app.audit, app.train.device, app.train.seed, progress=True,
                       run_dir=Path(args.generator))
    console = Console()
    held = result["heldout"]
    console.print(f"audited {result['n_synthetic']} synthetic against {result['n_train']} training and "
                  f"{result['n_heldout']} held-out images", highlight=False)
    if held["holdout_file"]:
        console.print(f"held out: {held['holdout_rows']} rows of {held['holdout_patients']} patients "
                      f"({HOLDOUT_FILE}), {held['val_test_rows']} val/test rows", highlight=False)
    for space in ("pixel", "embedding"):
        s = result.get(space)
        if s:
            console.print(f"{space}: near copies {s['near_copy_fraction']:.3f} (threshold {s['threshold']:.4f}), "
                          f"closer to train {s['closer_to_train_fraction']:.3f}", highlight=False)
    console.print(f"audit {'[green]passed[/green]' if result['passed'] else '[red]FAILED[/red]'}: "
                  f"{escape(str(Path(args.corpus) / AUDIT_FILE))}")
    for reason in result["failures"]:
        console.print(f"  - {escape(reason)}", highlight=False)
    if app.report.html:
        _refresh_reports(Path(args.corpus))
    return 0 if result["passed"] else 3


def _export(args: argparse.Namespace) -> int:
    from synthetic.export import export_corpus

    if args.force and not args.reason:
        raise ValueError("--force needs --reason TEXT: the dataset card records why a failed audit was overridden")
    card = export_corpus(Path(args.corpus), Path(args.out), args.reason if args.force else None)
    Console().print(f"exported to {args.out} ({card.name})", highlight=False)
    return 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="retina-synth", description="Synthetic retinal corpora")
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train the conditional diffusion generator on a site's images")
    train.add_argument("--manifest", action="append", required=True, help="site manifest (repeat for several)")
    train.add_argument("--run-dir", default="runs/synth", help="the generator's run folder")
    train.add_argument("--dp", action="store_true", help="train with DP-SGD (privacy.* settings apply)")
    train.add_argument("--resume", action="store_true", help="continue the run folder's training")
    sample = commands.add_parser("sample", help="sample a corpus with a fast scheduler")
    sample.add_argument("--generator", required=True, help="generator run folder (retina-synth train), or a "
                        "generator folder such as a federated run's checkpoints/round_NNNN")
    sample.add_argument("--out", required=True, help="new folder for the corpus")
    sample.add_argument("--n", type=int)
    sample.add_argument("--labels", help='label mix, e.g. "moderate_npdr=0.2,normal=0.5" (default: training mix)')
    sample.add_argument("--modalities", help='modality mix, e.g. "CFP=0.7,OCT=0.3" (default: training mix)')
    sample.add_argument("--scheduler", choices=("ddim", "dpm_solver", "ddpm"))
    sample.add_argument("--steps", type=int)
    sample.add_argument("--guidance", type=float)
    sample.add_argument("--seed", type=int)
    audit = commands.add_parser("audit", help="memorisation and quality audit against the site's images")
    audit.add_argument("--corpus", required=True)
    audit.add_argument("--generator", required=True, help="generator run folder (its manifests are audited against)")
    audit.add_argument("--checkpoint", help="RetinaCLIP checkpoint for embedding-space checks and label fidelity")
    export = commands.add_parser("export", help="copy an audited corpus with its dataset card")
    export.add_argument("--corpus", required=True)
    export.add_argument("--out", required=True)
    export.add_argument("--force", action="store_true", help="export despite a failed audit (needs --reason)")
    export.add_argument("--reason", help="why the failed audit is overridden (recorded in the card)")
    for sub in (train, sample, audit):
        sub.add_argument("overrides", nargs="*", help="Hydra overrides of the synth config")
    args = parser.parse_args(argv)
    if args.command == "export":
        args.overrides = []

    from shared_model.cli.errors import user_errors
    from shared_model.privacy.ledger import LedgerError
    from synthetic.audit import AuditError
    from synthetic.export import ExportRefused
    from synthetic.generator import GeneratorError

    with user_errors(LedgerError, AuditError, ExportRefused, GeneratorError):
        sys.exit({"train": _train, "sample": _sample, "audit": _audit, "export": _export}[args.command](args))


if __name__ == "__main__":
    main()
