"""The Flower ClientApp (Message API): unpack the round's message, call the site's library
code (:mod:`client.site_training`), pack the reply. The reply carries weights and metrics
only; the site's data paths stay in its node config."""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from shared_model.config import FederationAppConfig
from shared_model.model.update_codec import encode_bf16_delta
from shared_model.run_config import unflatten_config
from client.site_config import site_from_node_config
from client.secure_aggregation import secagg_mod
from client.site_training import Expected, evaluate_round, train_round

app = ClientApp(mods=[secagg_mod])


def _unpack(msg: Message, context: Context):
    cfg = unflatten_config(dict(context.run_config), FederationAppConfig)
    site = site_from_node_config(dict(context.node_config), cfg)
    config = msg.content["config"]
    expected = Expected(config.get("model-schema"), config.get("app-version"))
    return cfg, site, config, msg.content["arrays"].to_torch_state_dict(), expected


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Local training from the round's global weights."""
    cfg, site, config, global_state, expected = _unpack(msg, context)
    if cfg.task == "generator":
        from client.generator_round import train_generator_round

        result = train_generator_round(cfg, site, global_state, int(config["server-round"]), expected)
    else:
        result = train_round(cfg, site, global_state, int(config["server-round"]),
                             float(config.get("proximal-mu", 0.0)), expected=expected)
    arrays = ArrayRecord(result.state)
    if cfg.federation.update_encoding == "bf16-delta":
        encoded = encode_bf16_delta(result.state, global_state, result.statistics)
        arrays = ArrayRecord({k: Array(v) for k, v in encoded.items()})
    if cfg.secagg.enabled:
        arrays, clipped = secagg_delta(arrays, msg.content["arrays"], cfg.secagg.clipping_range)
        # Weight 1 per site (0 if it did not train): example counts stay hidden too.
        result.metrics.update({"num-examples": int(result.metrics["steps"] > 0), "secagg-clipped-fraction": clipped})
    content = RecordDict({"arrays": arrays, "metrics": MetricRecord(result.metrics),
                          "site": ConfigRecord({"name": site.name}), "privacy": ConfigRecord(result.privacy)})
    return Message(content=content, reply_to=msg)


def secagg_delta(local: ArrayRecord, global_arrays: ArrayRecord, clip: float) -> tuple[ArrayRecord, float]:
    """Update as float64 deltas clipped to [-clip, clip] (what SecAgg+ quantises), and the share
    of coordinates the clipping changed."""
    deltas, clipped, total = {}, 0, 0
    for key, array in local.items():
        delta = array.numpy().astype(np.float64) - global_arrays[key].numpy().astype(np.float64)
        if not np.isfinite(delta).all():
            raise ValueError(f"non-finite values in the update of {key!r}; not sending it")
        clipped += int((np.abs(delta) > clip).sum())
        total += delta.size
        deltas[key] = Array(np.asarray(np.clip(delta, -clip, clip)))  # np.clip turns 0-d arrays into scalars
    return ArrayRecord(deltas), clipped / max(total, 1)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Zero-shot score of the global weights on the site's test split."""
    cfg, site, config, global_state, expected = _unpack(msg, context)
    metrics = evaluate_round(cfg, site, global_state, int(config["server-round"]), expected)
    content = RecordDict({"metrics": MetricRecord(metrics), "site": ConfigRecord({"name": site.name})})
    return Message(content=content, reply_to=msg)
