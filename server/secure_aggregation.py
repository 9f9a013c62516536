"""SecAgg+ (Bell et al. 2020, "Secure Single-Server Aggregation with (Poly)Logarithmic
Overhead") over the Message API: the coordinator learns only the sum of the sites' updates.

Flower 1.41's ``SecAggPlusWorkflow`` needs the legacy context and strategy, and, measured here,
mis-decodes 0-d arrays and fails when a site drops during key sharing. This module drives the
four stages itself over ``grid.send_and_receive`` (setup -> share keys -> collect masked vectors
-> unmask) and reuses Flower's client-side ``secaggplus_mod`` and its cryptographic primitives
(X25519 key agreement, Shamir sharing, pseudo-random masks, quantisation) unchanged.

Sites send deltas (local - global) with weight 1, clipped per coordinate to
``[-clipping_range, clipping_range]`` and stochastically quantised to ``quantization_range``
levels; masks are added modulo ``modulus_range``. The result is the mean delta over the sites
that survived; fewer than ``threshold`` survivors at any stage aborts the round with no
aggregate and nothing unmasked.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.app.message_type import MessageType
from flwr.common import bytes_to_ndarray
from flwr.common.secure_aggregation.crypto.shamir import combine_shares
from flwr.common.secure_aggregation.crypto.symmetric_encryption import generate_shared_key
from flwr.common.secure_aggregation.ndarrays_arithmetic import (
    factor_extract,
    get_parameters_shape,
    parameters_addition,
    parameters_mod,
    parameters_subtraction,
)
from flwr.common.secure_aggregation.quantization import dequantize
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen
from flwr.serverapp import Grid
from flwr.supercore.primitives.asymmetric import bytes_to_private_key, bytes_to_public_key

from shared_model.config import SecAggConfig

log = logging.getLogger(__name__)

STAGES = (Stage.SETUP, Stage.SHARE_KEYS, Stage.COLLECT_MASKED_VECTORS, Stage.UNMASK)


class SecAggAbort(RuntimeError):
    """Too few sites survived a stage: no aggregate, nothing unmasked."""


@dataclass
class SecAggResult:
    """The unmasked mean of the survivors' deltas and what each stage lost."""

    mean: list[np.ndarray]  # float64, in the order of the global arrays
    survivors: list[int]
    replies: list[Message]  # the survivors' stage-3 replies: masked vectors, metrics, site name
    received: list[Message] = field(default_factory=list)  # every stage-3 reply, screened out or not
    dropped: dict[str, list[int]] = field(default_factory=dict)


def threshold_for(cfg: SecAggConfig, sampled: int) -> int:
    """Shamir threshold: the configured one, else a majority of the sampled sites (at least 2)."""
    return cfg.threshold if cfg.threshold > 0 else max(2, sampled // 2 + 1)


def quantisation_step(cfg: SecAggConfig) -> float:
    """Spacing of the quantisation grid; each coordinate's rounding error is below it."""
    return 2 * cfg.clipping_range / cfg.quantization_range


def _neighbours(nodes: list[int], share_num: int) -> dict[int, set[int]]:
    # SecAgg+'s ring: each site shares with the share_num nearest in a random order (itself included).
    order = list(nodes)
    random.SystemRandom().shuffle(order)
    half = share_num // 2
    return {nid: {order[(i + o) % len(order)] for o in range(-half, half + 1)} for i, nid in enumerate(order)}


def _round_sizes(cfg: SecAggConfig, n: int) -> tuple[int, int]:
    """The Shamir threshold and the number of sites each shares with, for a round over ``n``
    sites, once the configuration is checked to allow such a round."""
    threshold = threshold_for(cfg, n)
    share_num = n if cfg.neighbours <= 0 else min(cfg.neighbours, n)
    if n < 2 or not 2 <= threshold <= share_num:
        raise SecAggAbort(f"secure aggregation needs at least 2 sites and 2 <= threshold <= {share_num}; "
                          f"got {n} sites, threshold {threshold}")
    if cfg.modulus_range & (cfg.modulus_range - 1) or cfg.modulus_range > 2 ** 32:
        raise ValueError(f"secagg.modulus_range must be a power of 2 <= 2**32, got {cfg.modulus_range}")
    if n * cfg.quantization_range >= cfg.modulus_range:
        raise ValueError(f"{n} sites x secagg.quantization_range {cfg.quantization_range} would wrap around "
                         f"secagg.modulus_range {cfg.modulus_range}")
    return threshold, share_num


def _stage_config(values: dict) -> RecordDict:
    return RecordDict({RECORD_KEY_CONFIGS: ConfigRecord(values)})


def _config(reply: Message) -> ConfigRecord:
    return reply.content.config_records[RECORD_KEY_CONFIGS]


class _SecAggRound:
    """The coordinator's side of one SecAgg+ round: one method per stage, in protocol order."""

    def __init__(self, grid: Grid, nodes: list[int], cfg: SecAggConfig, timeout: float) -> None:
        self.grid, self.cfg, self.timeout = grid, cfg, timeout
        self.n = len(nodes)
        self.threshold, self.share_num = _round_sizes(cfg, self.n)
        self.neighbours = _neighbours(nodes, self.share_num)
        self.public_keys: dict[int, list[bytes]] = {}
        self.dropped: dict[str, list[int]] = {}

    def send(self, build: Callable[[int], RecordDict], targets: set[int], stage: str) -> dict[int, Message]:
        """Send ``build(node)`` to every target; the replies without error, by node (too few: abort)."""
        messages = [Message(build(nid), nid, MessageType.TRAIN) for nid in sorted(targets)]
        replies = {}
        for reply in self.grid.send_and_receive(messages, timeout=self.timeout):
            if reply.has_error():
                log.warning("secagg %s: site node-%d replied with an error (%s)", stage,
                            reply.metadata.src_node_id, reply.error.reason)
            else:
                replies[reply.metadata.src_node_id] = reply
        self.dropped[stage] = sorted(targets - set(replies))
        self.require(set(replies), targets, stage, "replied")
        return replies

    def require(self, alive: set[int], targets: set[int], stage: str, done: str) -> None:
        """Abort unless ``threshold`` sites, and as many neighbours of each, are still ``alive``."""
        if len(alive) < self.threshold or any(len(self.neighbours[nid] & alive) < self.threshold for nid in alive):
            raise SecAggAbort(f"secure aggregation stage {stage!r}: {len(alive)} of {len(targets)} sites {done}, "
                              f"threshold {self.threshold}; round aborted, nothing unmasked")

    def setup(self, nodes: list[int]) -> set[int]:
        """Stage 1: the round's parameters out, each site's two public keys back; the sites keyed."""
        cfg = self.cfg
        setup = {Key.STAGE: Stage.SETUP, Key.SAMPLE_NUMBER: self.n, Key.SHARE_NUMBER: self.share_num,
                 Key.THRESHOLD: self.threshold, Key.CLIPPING_RANGE: float(cfg.clipping_range),
                 Key.TARGET_RANGE: cfg.quantization_range, Key.MOD_RANGE: cfg.modulus_range, Key.MAX_WEIGHT: 1.0}
        replies = self.send(lambda nid: _stage_config(setup), set(nodes), Stage.SETUP)
        self.public_keys = {nid: [_config(r)[k] for k in (Key.PUBLIC_KEY_1, Key.PUBLIC_KEY_2)]
                            for nid, r in replies.items()}
        return set(replies)

    def share_keys(self, keyed: set[int]) -> dict[int, tuple[list[int], list[bytes]]]:
        """Stage 2: each site gets its keyed neighbours' public keys and returns its secrets' shares
        encrypted for them; the shares routed to each site that replied: (sources, ciphertexts)."""
        def share_stage(nid: int) -> RecordDict:
            return _stage_config({Key.STAGE: Stage.SHARE_KEYS,
                                  **{str(j): self.public_keys[j] for j in self.neighbours[nid] & keyed}})

        replies = self.send(share_stage, keyed, Stage.SHARE_KEYS)
        routed: dict[int, tuple[list[int], list[bytes]]] = {nid: ([], []) for nid in replies}
        for src, reply in replies.items():
            record = _config(reply)
            for dst, ciphertext in zip(record[Key.DESTINATION_LIST], record[Key.CIPHERTEXT_LIST], strict=True):
                if dst in routed:
                    routed[dst][0].append(src)
                    routed[dst][1].append(ciphertext)
        return routed

    def collect_masked_vectors(self, routed: dict[int, tuple[list[int], list[bytes]]],
                               train_content: Callable[[int], RecordDict],
                               screen: Callable[[list[Message]], list[Message]]
                               ) -> tuple[dict[int, Message], dict[int, Message], list[np.ndarray]]:
        """Stage 3: each site trains and returns its masked, quantised delta. Returns every reply,
        the replies ``screen`` kept (the survivors), and the survivors' masked sum (mod the modulus)."""
        def masked_stage(nid: int) -> RecordDict:
            content = train_content(nid)
            content[RECORD_KEY_CONFIGS] = ConfigRecord({Key.STAGE: Stage.COLLECT_MASKED_VECTORS,
                                                        Key.SOURCE_LIST: routed[nid][0],
                                                        Key.CIPHERTEXT_LIST: routed[nid][1]})
            return content

        shared = set(routed)
        received = self.send(masked_stage, shared, Stage.COLLECT_MASKED_VECTORS)
        replies = {reply.metadata.src_node_id: reply for reply in screen(list(received.values()))}
        self.require(set(replies), shared, Stage.COLLECT_MASKED_VECTORS, "sent a usable masked vector")
        masked = None
        for reply in replies.values():
            vector = [bytes_to_ndarray(b) for b in _config(reply)[Key.MASKED_PARAMETERS]]
            masked = vector if masked is None else parameters_addition(masked, vector)
        return received, replies, parameters_mod(masked, self.cfg.modulus_range)

    def unmask(self, masked: list[np.ndarray], survivors: set[int], dead: set[int]) -> list[np.ndarray]:
        """Stage 4: the survivors' shares rebuild each survivor's own mask seed and each dead site's
        private key; removing those masks from the masked sum leaves the quantised sum."""
        cfg = self.cfg

        def unmask_stage(nid: int) -> RecordDict:
            return _stage_config({Key.STAGE: Stage.UNMASK,
                                  Key.ACTIVE_NODE_ID_LIST: sorted(self.neighbours[nid] & survivors),
                                  Key.DEAD_NODE_ID_LIST: sorted(self.neighbours[nid] & dead)})

        replies = self.send(unmask_stage, survivors, Stage.UNMASK)
        shares: dict[int, list[bytes]] = {nid: [] for nid in survivors | dead}
        for reply in replies.values():
            record = _config(reply)
            for owner, share in zip(record[Key.NODE_ID_LIST], record[Key.SHARE_LIST], strict=True):
                shares[owner].append(share)
        shapes = get_parameters_shape(masked)
        for owner, owned in shares.items():
            if len(owned) < self.threshold:
                raise SecAggAbort(f"secure aggregation unmask: {len(owned)} shares for a site, "
                                  f"threshold {self.threshold}")
            secret = combine_shares(owned)
            if owner in survivors:  # the survivor's own mask seed
                masked = parameters_subtraction(masked, pseudo_rand_gen(secret, cfg.modulus_range, shapes))
            else:  # a site that dropped after sharing keys: cancel its pairwise masks with the survivors
                private_key = bytes_to_private_key(secret)
                for other in self.neighbours[owner] & survivors:
                    shared_key = generate_shared_key(private_key, bytes_to_public_key(self.public_keys[other][0]))
                    pairwise = pseudo_rand_gen(shared_key, cfg.modulus_range, shapes)
                    masked = (parameters_subtraction if other > owner else parameters_addition)(masked, pairwise)
        return parameters_mod(masked, cfg.modulus_range)


def _dequantised_mean(cfg: SecAggConfig, summed: list[np.ndarray], survivors: int) -> list[np.ndarray]:
    """The mean delta (float64) from the unmasked quantised sum of ``survivors`` sites' deltas."""
    shapes = get_parameters_shape(summed)
    total_weight, summed = factor_extract(summed)
    summed = dequantize(summed, cfg.clipping_range, cfg.quantization_range)
    offset = -(survivors - 1) * cfg.clipping_range  # dequantize shifts by -r once; the sum holds n shifts
    weight = int(total_weight) / cfg.quantization_range
    if weight <= 0:
        raise SecAggAbort("secure aggregation: the surviving sites carried no weight")
    # Flower's array arithmetic returns numpy scalars for 0-d arrays, so build fresh arrays.
    return [np.asarray((np.asarray(v, dtype=np.float64) + offset) / weight).reshape(s)
            for v, s in zip(summed, shapes[1:], strict=True)]  # shapes[0] is the weight entry


def secure_mean(grid: Grid, nodes: list[int], train_content: Callable[[int], RecordDict], cfg: SecAggConfig,
                timeout: float, screen: Callable[[list[Message]], list[Message]] = list) -> SecAggResult:
    """Run one SecAgg+ round over ``nodes``; ``train_content(node)`` is the usual train message
    content (global arrays and config). ``screen`` keeps the masked-vector replies that may be
    summed (:func:`server.update_screen.masked_mismatch`); a screened-out site is unmasked as one
    that dropped after sharing keys: its pairwise masks are cancelled, its own stays secret.
    Raises :class:`SecAggAbort` when too few survive."""
    secagg = _SecAggRound(grid, nodes, cfg, timeout)
    keyed = secagg.setup(nodes)
    routed = secagg.share_keys(keyed)
    received, replies, masked = secagg.collect_masked_vectors(routed, train_content, screen)
    survivors = set(replies)
    summed = secagg.unmask(masked, survivors, set(routed) - survivors)
    mean = _dequantised_mean(cfg, summed, len(survivors))
    return SecAggResult(mean, sorted(survivors), list(replies.values()), list(received.values()), secagg.dropped)
