"""The Flower ClientApp (Message API): unpack the round's message, hand it to the run's federated
task (:mod:`shared_model.federated.task`), pack the reply. The reply carries weights and metrics
only; the site's data paths stay in its node config."""

from __future__ import annotations

from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client.error_feedback import load_residual, save_residual
from client.secure_aggregation import secagg_delta, secagg_mod
from client.site_config import site_from_node_config
from shared_model import wire
from shared_model.config import FederationAppConfig
from shared_model.federated.site import Expected
from shared_model.federated.task import task_for
from shared_model.model.update_codec import encode_update
from shared_model.run_config import unflatten_config

app = ClientApp(mods=[secagg_mod])


def _unpack(msg: Message, context: Context):
    cfg = unflatten_config(dict(context.run_config), FederationAppConfig)
    site = site_from_node_config(dict(context.node_config), cfg)
    config = msg.content[wire.CONFIG]
    return cfg, site, config, msg.content[wire.ARRAYS].to_torch_state_dict(), Expected.announced(config)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Local training from the round's global weights."""
    cfg, site, config, global_state, expected = _unpack(msg, context)
    fed, server_round = cfg.federation, int(config[wire.SERVER_ROUND])
    result = task_for(cfg.task).train_site(cfg, site, global_state, server_round, dict(config), expected)
    feedback = fed.update_encoding == "int8-delta" and fed.error_feedback
    residual = load_residual(site.state_dir, server_round) if feedback else None
    encoded, error = encode_update(fed.update_encoding, result.state, global_state, result.statistics, residual)
    if feedback:
        save_residual(site.state_dir, server_round, error)
    arrays = ArrayRecord({k: Array(v) for k, v in encoded.items()})
    if cfg.secagg.enabled:
        arrays, clipped = secagg_delta(arrays, msg.content[wire.ARRAYS], cfg.secagg.clipping_range)
        # Weight 1 per site (0 if it did not train): example counts stay hidden too.
        result.metrics.update({wire.NUM_EXAMPLES: int(result.metrics[wire.STEPS] > 0), wire.SECAGG_CLIPPED: clipped})
    content = RecordDict({wire.ARRAYS: arrays, wire.METRICS: MetricRecord(result.metrics),
                          wire.SITE: ConfigRecord({wire.SITE_NAME: site.name}),
                          wire.PRIVACY: ConfigRecord(result.privacy)})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """The run's task scores the global weights on the site's test split."""
    cfg, site, config, global_state, expected = _unpack(msg, context)
    metrics = task_for(cfg.task).evaluate_site(cfg, site, global_state, int(config[wire.SERVER_ROUND]), expected)
    content = RecordDict({wire.METRICS: MetricRecord(metrics), wire.SITE: ConfigRecord({wire.SITE_NAME: site.name})})
    return Message(content=content, reply_to=msg)
