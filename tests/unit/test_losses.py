"""Loss values against hand-computed cases, and the properties each loss declares."""

import math

import pytest
import torch
import torch.nn.functional as F

from shared_model.losses import ClipInfoNCELoss, FlairSoftTargetLoss, MAEReconstructionLoss, ModalityContrastLoss
from shared_model.losses.flair_soft_targets import label_targets

ONE = torch.tensor(1.0)


def test_clip_loss_matches_hand_computed_two_by_two():
    # logits = I: each row is softmax([1, 0]); loss = log(1 + e^-1) in both directions.
    e = torch.eye(2)
    assert ClipInfoNCELoss()(e, e, ONE).item() == pytest.approx(math.log(1 + math.exp(-1)), abs=1e-6)


def test_clip_loss_is_symmetric_cross_entropy():
    torch.manual_seed(0)
    a, b = F.normalize(torch.randn(5, 8), dim=-1), F.normalize(torch.randn(5, 8), dim=-1)
    logits = 10 * a @ b.t()
    target = torch.arange(5)
    expected = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))
    assert ClipInfoNCELoss()(a, b, torch.tensor(10.0)).item() == pytest.approx(expected.item(), abs=1e-6)


def test_flair_soft_targets_hand_computed_same_label_pair():
    # Both rows share a label: targets 0.5/0.5; loss = -0.5 (ln s(1) + ln s(-1)) with s the logistic.
    e = torch.eye(2)
    p, q = 1 / (1 + math.exp(-1)), 1 / (1 + math.exp(1))
    expected = -0.5 * (math.log(p) + math.log(q))
    assert FlairSoftTargetLoss()(e, e, ONE, torch.tensor([3, 3])).item() == pytest.approx(expected, abs=1e-6)


def test_flair_equals_clip_when_labels_are_distinct_or_missing():
    torch.manual_seed(1)
    a, b = F.normalize(torch.randn(6, 4), dim=-1), F.normalize(torch.randn(6, 4), dim=-1)
    clip = ClipInfoNCELoss()(a, b, torch.tensor(20.0))
    for ids in (torch.arange(6), torch.full((6,), -1)):
        assert FlairSoftTargetLoss()(a, b, torch.tensor(20.0), ids).item() == pytest.approx(clip.item(), abs=1e-6)
    # positive control: shared labels change the value
    assert (FlairSoftTargetLoss()(a, b, torch.tensor(20.0), torch.zeros(6, dtype=torch.long)).item()
            != pytest.approx(clip.item()))


def test_label_targets_rows_sum_to_one_and_unlabelled_keep_diagonal():
    t = label_targets(torch.tensor([0, 0, -1, -1, 1]))
    assert torch.allclose(t.sum(1), torch.ones(5))
    assert t[0, 1] == 0.5 and t[2, 3] == 0 and t[2, 2] == 1 and t[4, 4] == 1


def test_modality_contrast_ignores_rows_without_partner():
    torch.manual_seed(2)
    a, b = F.normalize(torch.randn(4, 3), dim=-1), F.normalize(torch.randn(4, 3), dim=-1)
    has = torch.tensor([1, 1, 1, 0])
    loss = ModalityContrastLoss()(a, b, ONE, has)
    assert loss.item() == pytest.approx(ClipInfoNCELoss()(a[:3], b[:3], ONE).item(), abs=1e-6)
    assert ModalityContrastLoss()(a, b, ONE, torch.tensor([1, 0, 0, 0])) is None


def test_modality_contrast_with_labels_treats_same_diagnosis_as_positive():
    torch.manual_seed(4)
    a, b = F.normalize(torch.randn(4, 3), dim=-1), F.normalize(torch.randn(4, 3), dim=-1)
    has = torch.ones(4)
    plain = ModalityContrastLoss()(a, b, ONE, has)
    assert ModalityContrastLoss()(a, b, ONE, has, torch.arange(4)).item() == pytest.approx(plain.item(), abs=1e-6)
    shared = ModalityContrastLoss()(a, b, ONE, has, torch.tensor([0, 0, 1, 1]))
    expected = FlairSoftTargetLoss()(a, b, ONE, torch.tensor([0, 0, 1, 1]))
    assert shared.item() == pytest.approx(expected.item(), abs=1e-6) and shared.item() != pytest.approx(plain.item())


def test_mae_loss_reads_only_masked_patches():
    torch.manual_seed(3)
    target, pred = torch.randn(2, 6, 12), torch.randn(2, 6, 12)
    mask = torch.tensor([[1, 1, 0, 0, 0, 1], [0, 1, 1, 1, 0, 0]], dtype=torch.float)
    loss = MAEReconstructionLoss(norm_pix=True)
    base = loss(target, pred, mask)
    visible_changed = pred.clone()
    visible_changed[mask == 0] += 5.0
    assert loss(target, visible_changed, mask).item() == pytest.approx(base.item(), abs=1e-6)
    masked_changed = pred.clone()
    masked_changed[0, 0] += 5.0
    assert loss(target, masked_changed, mask).item() != pytest.approx(base.item())


def test_mae_loss_hand_computed_without_norm_pix():
    target = torch.zeros(1, 2, 2)
    pred = torch.tensor([[[1.0, 1.0], [3.0, 3.0]]])
    # only patch 1 masked: mean((3-0)^2) = 9
    assert MAEReconstructionLoss(norm_pix=False)(target, pred, torch.tensor([[0.0, 1.0]])).item() == pytest.approx(9.0)


def test_decomposability_flags():
    assert MAEReconstructionLoss.per_example_decomposable
    assert not ClipInfoNCELoss.per_example_decomposable
    assert not FlairSoftTargetLoss.per_example_decomposable
    assert not ModalityContrastLoss.per_example_decomposable


def test_public_bank_encoded_in_length_chunks_equals_one_batch(tiny_model_cfg, monkeypatch):
    import dataclasses

    from shared_model.losses import bank_contrast
    from shared_model.model import build_model

    torch.manual_seed(0)
    model = build_model(dataclasses.replace(tiny_model_cfg, text=dataclasses.replace(tiny_model_cfg.text,
                                                                                     trainable_layers=2)))
    bank = bank_contrast.PublicTextBank(["drusen", "normal", "glaucoma", "macular hole"])
    chunked = bank.embeddings(model)
    monkeypatch.setattr(bank_contrast, "CHUNK", 10 ** 6)
    assert chunked.shape == (4, 256) and model.text.training
    assert torch.allclose(chunked, bank.embeddings(model), atol=1e-5)
