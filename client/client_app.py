"""The Flower ClientApp (Message API): unpack the round's message, call the site's library
code (:mod:`client.site_training`), pack the reply. The reply carries weights and metrics
only; the site's data paths stay in its node config."""

from __future__ import annotations

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from shared_model.config import FederationAppConfig
from shared_model.run_config import unflatten_config
from client.site_config import site_from_node_config
from client.site_training import evaluate_round, train_round

app = ClientApp()


def _unpack(msg: Message, context: Context):
    cfg = unflatten_config(dict(context.run_config), FederationAppConfig)
    site = site_from_node_config(dict(context.node_config), cfg)
    config = msg.content["config"]
    return cfg, site, config, msg.content["arrays"].to_torch_state_dict()


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Local training from the round's global weights."""
    cfg, site, config, global_state = _unpack(msg, context)
    state, metrics = train_round(cfg, site, global_state, int(config["server-round"]),
                                 float(config.get("proximal-mu", 0.0)))
    content = RecordDict({"arrays": ArrayRecord(state), "metrics": MetricRecord(metrics),
                          "site": ConfigRecord({"name": site.name})})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Zero-shot score of the global weights on the site's test split."""
    cfg, site, config, global_state = _unpack(msg, context)
    metrics = evaluate_round(cfg, site, global_state, int(config["server-round"]))
    content = RecordDict({"metrics": MetricRecord(metrics), "site": ConfigRecord({"name": site.name})})
    return Message(content=content, reply_to=msg)
