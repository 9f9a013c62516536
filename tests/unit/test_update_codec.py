"""bf16-delta updates (``federation.update_encoding=bf16-delta``): the codec's error is bounded
by bf16 rounding of the delta, running statistics travel exactly, a federation sends half the
bytes and lands on nearly the same aggregate as fp32, an update that is neither a bf16 delta nor
the value is rejected, and SecAgg+ refuses it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
from safetensors.torch import load_file

from server.aggregation import decode_bf16_updates
from server.compatibility import FederationConfigError, check_federation
from server.federation import run_federation
from server.round_checkpoint import latest_round
from shared_model.model.exchange import exchanged_state_dict, exchanged_statistics
from shared_model.model.update_codec import decode_bf16_delta, encode_bf16_delta
from tests.fixtures.in_process_grid import InProcessGrid
from tests.unit.test_federation import federation_cfg, grid_for


def test_decoded_weights_differ_from_the_sent_ones_by_bf16_rounding_of_the_delta():
    torch.manual_seed(0)
    global_state = {"w": torch.randn(64, 32), "steps": torch.tensor([3])}
    local = {"w": global_state["w"] + 1e-3 * torch.randn(64, 32), "steps": torch.tensor([5])}
    encoded = encode_bf16_delta(local, global_state)
    assert encoded["w"].dtype == np.int16 and encoded["w"].nbytes * 2 == local["w"].numpy().nbytes
    decoded = decode_bf16_delta("w", encoded["w"], global_state["w"].numpy())
    delta = (local["w"] - global_state["w"]).numpy()
    assert np.all(np.abs(decoded - local["w"].numpy()) <= 2 ** -8 * np.abs(delta) + 1e-7)
    assert decode_bf16_delta("steps", encoded["steps"], global_state["steps"].numpy()).tolist() == [5]
    with pytest.raises(ValueError, match="'w': expected a bf16 delta"):
        decode_bf16_delta("w", local["w"].double().numpy(), global_state["w"].numpy())


def test_running_statistics_travel_as_their_values():
    model = torch.nn.Sequential(torch.nn.Linear(8, 1280), torch.nn.BatchNorm1d(1280, affine=False))
    statistics = exchanged_statistics(model)
    assert statistics == {"1.running_mean", "1.running_var"}
    global_state = {k: v.clone() for k, v in exchanged_state_dict(model).items()}  # running_var starts at 1
    with torch.no_grad():
        model[0].weight.add_(1e-3)
        model[1].running_var.fill_(1e-4)  # tower features of tiny variance, as after a round on ODIR
    local = exchanged_state_dict(model)
    reference = global_state["1.running_var"].numpy()
    as_delta = encode_bf16_delta(local, global_state)["1.running_var"]
    assert decode_bf16_delta("1.running_var", as_delta, reference).max() == 0.0  # what BatchNorm would divide by
    encoded = encode_bf16_delta(local, global_state, statistics)
    assert encoded["0.weight"].dtype == np.int16 and encoded["1.running_var"].dtype == np.float32
    decoded = decode_bf16_delta("1.running_var", encoded["1.running_var"], reference)
    assert np.array_equal(decoded, local["1.running_var"].numpy())


def test_a_reply_that_is_not_a_bf16_delta_is_rejected():
    InProcessGrid({})  # stamps this process with a task identity, as Flower's runtime does
    global_arrays = ArrayRecord({"w": Array(np.zeros((2, 2), np.float32))})
    plain = Message(RecordDict({"arrays": ArrayRecord({"w": Array(np.ones((2, 2), np.float64))}),
                                "metrics": MetricRecord({"server-round": 1})}), dst_node_id=1, message_type="train")
    kept, reasons = decode_bf16_updates([plain], global_arrays)
    assert kept == [] and "not a bf16 delta" in reasons[id(plain)]


def test_secagg_refuses_bf16_deltas(small_phantom, tmp_path):
    cfg = federation_cfg(small_phantom, tmp_path, "secagg=on", "federation.update_encoding=bf16-delta")
    with pytest.raises(FederationConfigError, match="update_encoding=fp32"):
        check_federation(cfg)
    with pytest.raises(FederationConfigError, match="update_encoding must be one of"):
        check_federation(federation_cfg(small_phantom, tmp_path, "federation.update_encoding=int8"))


def test_bf16_federation_sends_half_and_lands_near_the_fp32_aggregate(small_phantom, tmp_path):
    results = {}
    for encoding in ("fp32", "bf16-delta"):
        cfg = federation_cfg(small_phantom, tmp_path / encoding, "federation.rounds=1", "eval=none",
                             "strategy.fraction_evaluate=0", f"federation.update_encoding={encoding}")
        state = run_federation(grid_for(cfg), cfg)
        folder, _ = latest_round(tmp_path / encoding)
        results[encoding] = (state.history[0], load_file(str(folder / "model.safetensors")))
    (fp32, weights32), (bf16, weights16) = results["fp32"], results["bf16-delta"]
    assert fp32["bytes_sent"] == bf16["bytes_sent"]  # the global model still goes out in fp32
    assert 0.45 < bf16["bytes_received"] / fp32["bytes_received"] < 0.55
    changed = [k for k in weights32 if weights32[k].is_floating_point() and weights32[k].numel() > 1]
    for key in changed:
        assert torch.allclose(weights16[key], weights32[key], rtol=1e-2, atol=1e-4), key
