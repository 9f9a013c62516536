"""On a CUDA GPU (``pytest -m cuda``, which bench/gpu_check.sh runs; skipped without one): the bf16
autocast training step, a DP-SGD step whose noise is drawn on the GPU at the planned scale, the
generator trained and sampled on the GPU, and the evaluator — each checked against what the same
computation gives, or must give, on the CPU. Tiny sizes: a few seconds each."""

from __future__ import annotations

import dataclasses
import math
from functools import partial

import numpy as np
import pytest
import torch

from bench.training_step import synthetic_batch
from shared_model.conf import compose_app
from shared_model.config import EvalConfig, EvalSetConfig, LossConfig, TrainConfig
from shared_model.data.manifest import load_manifest
from shared_model.eval.evaluate import embed_records, evaluate_model
from shared_model.losses import EyeCLIPObjective
from shared_model.model import build_model
from shared_model.privacy.dp_trainer import DPSGDTrainer
from shared_model.privacy.plan import DPPlan
from shared_model.runtime import seed_everything
from shared_model.train import LocalTrainer
from synthetic.generator import GENERATOR_DIR, load_generator
from synthetic.sampling import denoise, sampling_scheduler
from synthetic.training import train_generator

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

CUDA = torch.device("cuda")


def _trainable(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


def _record_dtype(store: dict, key: str, module, args, out) -> None:
    store.setdefault(key, out.dtype)


def test_bf16_autocast_step_computes_in_bf16_keeps_fp32_weights_and_matches_fp32(tiny_model_cfg):
    batch = synthetic_batch(8, tiny_model_cfg.image.image_size)
    losses, dtypes, autocast = {}, {}, {}
    for precision in ("bf16", "fp32"):
        seed_everything(0)
        model = build_model(tiny_model_cfg)
        cfg = TrainConfig(steps=1, batch_size=8, warmup_steps=0, precision=precision)
        trainer = LocalTrainer(model, EyeCLIPObjective(LossConfig()), cfg, CUDA)
        autocast[precision] = trainer.autocast
        before = _trainable(model)
        hook = model.visual.blocks[0].mlp.fc1.register_forward_hook(partial(_record_dtype, dtypes, precision))
        seed_everything(1)  # the same masks in both steps
        losses[precision] = float(trainer.train_step(batch).total.detach())
        hook.remove()
        after = dict(model.named_parameters())
        assert all(after[name].dtype == torch.float32 and after[name].device.type == CUDA.type for name in before)
        assert all(torch.isfinite(after[name]).all() for name in before)
        assert any(not torch.equal(after[name], value) for name, value in before.items())
    assert autocast == {"bf16": True, "fp32": False} and dtypes == {"bf16": torch.bfloat16, "fp32": torch.float32}
    assert math.isfinite(losses["bf16"]) and losses["bf16"] == pytest.approx(losses["fp32"], rel=0.05)


def test_dp_sgd_step_on_cuda_draws_its_noise_there_at_the_planned_scale(tiny_model_cfg):
    seed_everything(0)
    model = build_model(dataclasses.replace(tiny_model_cfg, opacus_compatible=True))
    # 8 images, rate 0.5 (expected batch q·N = 4), noise multiplier 1, clipping norm 0.05.
    plan = DPPlan("image", 8, 0.5, 1.0, 0.05, 1e-5, "prv", 10.0, "ghost")
    objective = EyeCLIPObjective(LossConfig(image_text_variant="bank", image_image=0.0))
    trainer = DPSGDTrainer(model, objective, TrainConfig(steps=2, batch_size=4, warmup_steps=0), CUDA,
                           list(range(8)), plan)
    assert trainer.autocast and trainer.dp.optimizer.generator.device.type == CUDA.type
    before = _trainable(model)
    loss = trainer.train_step(synthetic_batch(4, tiny_model_cfg.image.image_size))
    assert math.isfinite(float(loss.total.detach()))
    assert any(not torch.equal(p, before[name]) for name, p in model.named_parameters() if name in before)
    # An empty Poisson batch is a pure-noise step: each gradient entry is N(0, (σC)²) / (q·N).
    trainer.dp.zero_grad()
    trainer.dp.noise([])
    grads = torch.cat([p.grad.flatten() for p in trainer.dp.optimizer.params])
    trainer.close()
    assert grads.device.type == CUDA.type and grads.std().item() == pytest.approx(1.0 * 0.05 / 4, rel=0.05)
    assert abs(grads.mean().item()) < 0.05 * grads.std().item()


def test_generator_trains_and_samples_on_cuda_as_on_the_cpu(small_phantom, tmp_path):
    app = compose_app("synth", [f"data.manifests=[{small_phantom / 'site_0' / 'manifest.csv'}]", f"run_dir={tmp_path}",
                                f"train.device={CUDA.type}", "train.steps=3", "train.batch_size=8",
                                "train.warmup_steps=1", "train.num_workers=0", "train.log_every=1",
                                "generator.block_channels=[16,32]", "generator.attention_levels=0"])
    summary = train_generator(app, progress=False)
    assert summary["device"].startswith(CUDA.type) and math.isfinite(summary["loss"]["last"])
    model, _ = load_generator(tmp_path / GENERATOR_DIR)
    condition = torch.stack([model.conditioning.vector(model.conditioning.categories[:1],
                                                       model.conditioning.modalities[0])] * 3)
    images = {}
    for dev in (torch.device("cpu"), CUDA):
        scheduler = sampling_scheduler("ddim", model.cfg.num_train_timesteps)
        images[dev.type] = denoise(model.to(dev), condition, scheduler, 4, 2.0, torch.Generator().manual_seed(0), dev)
    size = app.generator.image_size
    gpu = images[CUDA.type]
    assert gpu.shape == (3, 3, size, size) and gpu.dtype == torch.float32 and 0 <= gpu.min() and gpu.max() <= 1
    assert torch.allclose(gpu, images["cpu"], atol=0.05)


def test_evaluator_on_cuda_gives_the_cpu_report_and_embeddings(small_phantom, tiny_model_cfg):
    manifest = small_phantom / "heldout" / "manifest.csv"
    cfg = EvalConfig(sets=[EvalSetConfig(name="h", path=str(manifest))], kshot=[1], kshot_trials=2, probe_folds=2)
    records = [r for r in load_manifest(manifest).records if r.modality == "CFP"]
    seed_everything(0)
    model = build_model(tiny_model_cfg)
    reports, embedded = {}, {}
    for dev in (torch.device("cpu"), CUDA):
        model.to(dev)
        reports[dev.type] = evaluate_model(model, cfg, 64, dev)
        embedded[dev.type] = embed_records(model, records, 64, dev).embeddings
    cpu, gpu = reports["cpu"], reports[CUDA.type]
    assert {k: sorted(v) for k, v in gpu.items()} == {k: sorted(v) for k, v in cpu.items()}
    assert all(gpu["zero_shot"][name]["n"] == cpu["zero_shot"][name]["n"] for name in cpu["zero_shot"])
    assert all(np.isfinite(gpu["zero_shot"][name]["aca"]) for name in gpu["zero_shot"])
    a, b = embedded["cpu"], embedded[CUDA.type]
    cosine = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert a.shape == b.shape and b.dtype == np.float32 and cosine.min() > 0.999
