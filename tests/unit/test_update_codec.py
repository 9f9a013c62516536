"""Delta updates (``federation.update_encoding=bf16-delta | int8-delta``): each codec's error is
bounded (bf16 rounding of the delta; half an int8 step of its channel's scale), int8 error
feedback keeps the rounding from accumulating over rounds, running statistics travel exactly, a
federation sends half (bf16) or about a quarter (int8) of the bytes and lands near the fp32
aggregate, an update that does not decode is rejected, and SecAgg+ refuses both."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
from safetensors.torch import load_file

from client.error_feedback import load_residual, save_residual
from server.aggregation import decode_updates
from server.compatibility import FederationConfigError, check_federation
from server.federation import run_federation
from server.round_checkpoint import latest_round
from shared_model.model.exchange import exchanged_state_dict, exchanged_statistics
from shared_model.model.update_codec import SCALE_SUFFIX, decode_update, encode_update
from tests.fixtures.in_process_grid import InProcessGrid
from tests.unit.test_federation import federation_cfg, grid_for


def _numpy(state: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in state.items()}


def test_decoded_weights_differ_from_the_sent_ones_by_bf16_rounding_of_the_delta():
    torch.manual_seed(0)
    global_state = {"w": torch.randn(64, 32), "steps": torch.tensor([3])}
    local = {"w": global_state["w"] + 1e-3 * torch.randn(64, 32), "steps": torch.tensor([5])}
    encoded, _ = encode_update("bf16-delta", local, global_state)
    assert encoded["w"].dtype == np.int16 and encoded["w"].nbytes * 2 == local["w"].numpy().nbytes
    decoded = decode_update("bf16-delta", encoded, _numpy(global_state))
    delta = (local["w"] - global_state["w"]).numpy()
    assert np.all(np.abs(decoded["w"] - local["w"].numpy()) <= 2 ** -8 * np.abs(delta) + 1e-7)
    assert decoded["steps"].tolist() == [5]
    with pytest.raises(ValueError, match="'w': expected a bf16 delta"):
        decode_update("bf16-delta", {**encoded, "w": local["w"].double().numpy()}, _numpy(global_state))


def test_int8_delta_is_within_half_a_step_of_its_channel_scale_at_a_quarter_of_the_bytes():
    torch.manual_seed(0)
    # Channels of very different magnitude: a per-tensor scale would flatten the small ones to 0.
    magnitude = torch.logspace(-5, -1, 64)[:, None]
    global_state = {"w": torch.randn(64, 256), "b": torch.randn(64), "t": torch.tensor(2.0)}
    local = {"w": global_state["w"] + magnitude * torch.randn(64, 256), "b": global_state["b"] + 1e-3,
             "t": torch.tensor(2.5)}
    encoded, error = encode_update("int8-delta", local, global_state)
    assert encoded["w"].dtype == np.int8 and encoded["w" + SCALE_SUFFIX].shape == (64,)
    assert encoded["b" + SCALE_SUFFIX].shape == () and encoded["t" + SCALE_SUFFIX].shape == ()
    sent = sum(a.nbytes for a in encoded.values())
    assert sent <= 0.27 * sum(v.numpy().nbytes for v in local.values())
    decoded = decode_update("int8-delta", encoded, _numpy(global_state))
    scale = encoded["w" + SCALE_SUFFIX][:, None]
    assert np.all(np.abs(decoded["w"] - local["w"].numpy()) <= scale / 2 + 1e-6)
    small = (local["w"] - global_state["w"])[0].numpy()  # the 1e-5 channel survives quantisation
    assert np.abs(decoded["w"][0] - global_state["w"][0].numpy() - small).max() <= 0.01 * np.abs(small).max()
    assert decoded["t"].shape == () and decoded["t"] == pytest.approx(2.5)
    true_delta = (local["w"] - global_state["w"]).numpy()
    assert np.allclose(error["w"].numpy(), true_delta - (decoded["w"] - global_state["w"].numpy()), atol=1e-6)


def test_int8_error_feedback_keeps_the_summed_rounding_error_within_one_step(tmp_path):
    """The same small change sent for 20 rounds: without feedback the rounding of every round adds
    up; with it, the total received differs from the total sent by less than one quantum."""
    torch.manual_seed(0)
    step = {"w": 0.3 * torch.randn(8, 16)}
    step["w"][:, 0] = 1.0  # fixes each channel's scale, so the other coordinates are rounded
    totals = {}
    for feedback in (False, True):
        state, received = {"w": torch.zeros(8, 16)}, torch.zeros(8, 16)
        for server_round in range(1, 21):
            residual = load_residual(tmp_path / str(feedback), server_round) if feedback else None
            encoded, error = encode_update("int8-delta", {"w": state["w"] + step["w"]}, state, (), residual)
            if feedback:
                save_residual(tmp_path / str(feedback), server_round, error)
            received += torch.from_numpy(decode_update("int8-delta", encoded, _numpy(state))["w"]) - state["w"]
        totals[feedback] = (received - 20 * step["w"]).abs().max().item()
    quantum = 1.0 / 127
    assert totals[True] < quantum < totals[False]
    assert sorted(p.name for p in (tmp_path / "True" / "update_residual").iterdir()) == [
        "round_0019.safetensors", "round_0020.safetensors"]


def test_a_tampered_int8_update_is_refused_naming_the_array():
    global_state = {"w": torch.zeros(4, 3)}
    encoded, _ = encode_update("int8-delta", {"w": torch.ones(4, 3)}, global_state)
    reference = _numpy(global_state)
    cases = {"without its scales": {"w": encoded["w"]},
             "must be finite and positive": {**encoded, "w" + SCALE_SUFFIX: np.full(4, np.inf, np.float32)},
             r"'w/int8-scale': expected scales \(float32\[4\]\)": {**encoded,
                                                                  "w" + SCALE_SUFFIX: np.ones(3, np.float32)},
             "scales of no int8 weight": {**encoded, "v" + SCALE_SUFFIX: np.ones((), np.float32)}}
    for message, arrays in cases.items():
        with pytest.raises(ValueError, match=message):
            decode_update("int8-delta", arrays, reference)


@pytest.mark.parametrize("encoding", ["bf16-delta", "int8-delta"])
def test_running_statistics_travel_as_their_values(encoding):
    model = torch.nn.Sequential(torch.nn.Linear(8, 1280), torch.nn.BatchNorm1d(1280, affine=False))
    statistics = exchanged_statistics(model)
    assert statistics == {"1.running_mean", "1.running_var"}
    global_state = {k: v.clone() for k, v in exchanged_state_dict(model).items()}  # running_var starts at 1
    with torch.no_grad():
        model[0].weight.add_(1e-3)
        model[1].running_var.fill_(1e-4)  # tower features of tiny variance, as after a round on ODIR
    local = exchanged_state_dict(model)
    reference = _numpy(global_state)
    if encoding == "bf16-delta":  # as a delta, the variance would decode to 0: what BatchNorm divides by
        as_delta, _ = encode_update(encoding, local, global_state)
        assert decode_update(encoding, as_delta, reference)["1.running_var"].max() == 0.0
    encoded, _ = encode_update(encoding, local, global_state, statistics)
    assert encoded["0.weight"].dtype != np.float32 and encoded["1.running_var"].dtype == np.float32
    decoded = decode_update(encoding, encoded, reference)
    assert np.array_equal(decoded["1.running_var"], local["1.running_var"].numpy())


def test_a_reply_that_is_not_a_bf16_delta_is_rejected():
    InProcessGrid({})  # stamps this process with a task identity, as Flower's runtime does
    global_arrays = ArrayRecord({"w": Array(np.zeros((2, 2), np.float32))})
    plain = Message(RecordDict({"arrays": ArrayRecord({"w": Array(np.ones((2, 2), np.float64))}),
                                "metrics": MetricRecord({"server-round": 1})}), dst_node_id=1, message_type="train")
    kept, reasons = decode_updates([plain], global_arrays, "bf16-delta")
    assert kept == [] and "not a bf16-delta" in reasons[id(plain)]


def test_secagg_refuses_delta_encodings(small_phantom, tmp_path):
    for encoding in ("bf16-delta", "int8-delta"):
        cfg = federation_cfg(small_phantom, tmp_path, "secagg=on", f"federation.update_encoding={encoding}")
        with pytest.raises(FederationConfigError, match=f"update_encoding={encoding}: SecAgg"):
            check_federation(cfg)
    with pytest.raises(FederationConfigError, match="update_encoding must be one of"):
        check_federation(federation_cfg(small_phantom, tmp_path, "federation.update_encoding=int8"))


def test_delta_federations_send_less_and_land_near_the_fp32_aggregate(small_phantom, tmp_path):
    results = {}
    for encoding in ("fp32", "bf16-delta", "int8-delta"):
        cfg = federation_cfg(small_phantom, tmp_path / encoding, "federation.rounds=1", "eval=none",
                             "strategy.fraction_evaluate=0", f"federation.update_encoding={encoding}")
        state = run_federation(grid_for(cfg), cfg)
        folder, _ = latest_round(tmp_path / encoding)
        results[encoding] = (state.history[0], load_file(str(folder / "model.safetensors")))
    (fp32, weights32), (bf16, weights16), (int8, weights8) = (results[e] for e in ("fp32", "bf16-delta", "int8-delta"))
    assert fp32["bytes_sent"] == bf16["bytes_sent"] == int8["bytes_sent"]  # the global model goes out in fp32
    assert 0.45 < bf16["bytes_received"] / fp32["bytes_received"] < 0.55
    assert 0.2 < int8["bytes_received"] / fp32["bytes_received"] <= 0.27
    changed = [k for k in weights32 if weights32[k].is_floating_point() and weights32[k].numel() > 1]
    for key in changed:
        assert torch.allclose(weights16[key], weights32[key], rtol=1e-2, atol=1e-4), key
        moved = (weights32[key] - weights8[key]).abs().max()
        assert moved <= 0.01 * weights32[key].abs().max() + 1e-4, key
    site = tmp_path / "int8-delta" / "sites" / "site_0" / "update_residual" / "round_0001.safetensors"
    assert site.is_file()  # error feedback kept the site's rounding for its next round
