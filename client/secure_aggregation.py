"""Site side of SecAgg+: the update as the clipped float64 delta that SecAgg+ quantises
(:func:`secagg_delta`), and Flower's ``secaggplus_mod`` in front of our Message-API train handler.

Flower 1.41's mod answers the setup, share-keys and unmask stages itself and masks the handler's
reply in the collect stage, but it reads that reply under the legacy ``fitres.*`` record names
and leaves the (emptied) array records in what it sends back. This mod renames our reply
(``arrays`` -> ``fitres.parameters``; the weight from ``metrics['num-examples']``) for it and
then strips every array record, so the only vector that leaves the site is the masked one.
Train messages without SecAgg+ configuration pass through untouched.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord
from flwr.app.message_type import MessageType
from flwr.client.mod import secaggplus_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS

from shared_model import wire

LEGACY_RECORDS = ("fitres.parameters", "fitres.num_examples", "fitres.metrics", "fitres.status")


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


def secagg_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """ClientApp mod: SecAgg+ for train messages that carry its configuration."""
    if msg.metadata.message_type != MessageType.TRAIN or RECORD_KEY_CONFIGS not in msg.content.config_records:
        return call_next(msg, context)

    def legacy_reply(message: Message, ctx: Context) -> Message:
        reply = call_next(message, ctx)
        if reply.has_error():
            raise RuntimeError(f"local training failed: {reply.error.reason}")
        content = reply.content
        metrics = content.metric_records.get(wire.METRICS, MetricRecord())
        content.array_records["fitres.parameters"] = content.array_records.pop(wire.ARRAYS)
        content.metric_records["fitres.num_examples"] = MetricRecord({"num_examples": metrics[wire.NUM_EXAMPLES]})
        content.config_records["fitres.metrics"] = ConfigRecord({})
        content.config_records["fitres.status"] = ConfigRecord({"code": 0, "message": "ok"})
        return reply

    out = secaggplus_mod(msg, context, legacy_reply)
    if out.has_content():
        content = out.content
        for key in {*content.array_records.keys(), *(k for k in LEGACY_RECORDS if k in content)}:
            del content[key]
    return out
