"""The training/evaluation data set over manifest records, with modality pairing, captions and
OCT volumes (as one B-scan, or as slices for the slice adapter).

Every random choice of a sample (augmentation, caption wording, partner, volume slice) is drawn
from a generator seeded by the sampler with ``(run seed, epoch, position)``, so an epoch is the
same however many workers load it and a resumed run continues exactly where it stopped.
Unreadable images are reported, skipped and counted, never silently dropped.
"""

from __future__ import annotations

import logging
import random
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from shared_model.data.augment import augment_batch, draw_params
from shared_model.data.decoded_cache import DecodedCache
from shared_model.data.manifest import Record
from shared_model.data.pairing import modality_partners, summarise_pairs
from shared_model.data.preprocess import prepare_image, to_model_input
from shared_model.data.readers import ImageReadError, read_frames
from shared_model.model.slice_pooling import SliceLayout, slice_positions
from shared_model.prompts.captions import build_caption

log = logging.getLogger(__name__)

TEXT_SOURCES = ("caption", "report", "mixed")
ORDER_STREAM = 1 << 40  # seed stream of the shuffling order, apart from sample positions


def sample_seed(seed: int, epoch: int, position: int) -> int:
    """A 63-bit seed for one sample, independent across (seed, epoch, position)."""
    return int(np.random.SeedSequence([seed, epoch, position]).generate_state(1, dtype=np.uint64)[0] >> 1)


def load_slices(record: Record, size: int) -> torch.Tensor:
    """All frames of a record as [S, 3, size, size] in [0, 1] (a 2-D image gives S = 1)."""
    return torch.stack([prepare_image(frame, record.modality, size) for frame in read_frames(record, size)])


def volume_slices(n_frames: int, k: int, gen: torch.Generator | None) -> torch.Tensor:
    """Which slices of a volume of ``n_frames`` to embed (sorted indices): ``k`` drawn at random
    in training (``gen``), ``k`` evenly spaced otherwise; all of them when ``k`` >= ``n_frames``."""
    if k >= n_frames:
        return torch.arange(n_frames)
    if gen is None:
        return torch.linspace(0, n_frames - 1, k).round().long()
    return torch.randperm(n_frames, generator=gen)[:k].sort().values


class RetinaDataset(Dataset):
    """Items are dicts: ``image`` [3, S, S] in [0, 1] (a volume embedded through the slice
    adapter: [K, 3, S, S] with its slices' table ``positions``), ``text``, ``labels``, in training
    with augmentation its parameters ``aug`` (applied batch-wise by :meth:`Batch.model_input`)
    and, when pairing is on, ``partner`` / ``partner_aug`` / ``partner_text`` /
    ``partner_labels`` / ``partner_positions`` from another modality of the same eye
    (``data.pairing``).

    ``volume_slices`` > 0 (a model with the slice adapter) embeds that many slices of each volume,
    their positions taken from a table of ``volume_table`` entries; 0 gives one B-scan a volume
    (random in training, the central one otherwise).

    ``cache`` (:mod:`shared_model.data.decoded_cache`, filled from these ``records`` at
    ``image_size``) serves the images it holds instead of decoding them; the items are the same
    up to its uint8 rounding, and every random draw is the same."""

    def __init__(self, records: list[Record], image_size: int, train: bool = True, text_source: str = "mixed",
                 pair_modalities: bool = False, augment: bool = True, class_balance: float = 0.0,
                 pair_by: str = "eye", volume_slices: int = 0, volume_table: int = 0,
                 cache: DecodedCache | None = None):
        if text_source not in TEXT_SOURCES:
            raise ValueError(f"data.text_source must be one of {TEXT_SOURCES}, got {text_source!r}")
        if not 0.0 <= class_balance <= 1.0:
            raise ValueError(f"data.class_balance must be in [0, 1], got {class_balance}")
        if volume_slices > volume_table:
            raise ValueError(f"{volume_slices} slices a volume exceed the model's table of {volume_table} "
                             "(model.volume_max_slices)")
        if cache is not None and (len(cache) != len(records) or cache.image_size != image_size):
            raise ValueError(f"the decoded cache {cache.path} holds {len(cache)} images at {cache.image_size} px, "
                             f"not these {len(records)} at {image_size} px")
        self.records = records
        self.cache = cache
        self.sample_weights = class_weights(records, class_balance) if class_balance > 0 else None
        self.image_size = image_size
        self.train = train
        self.augment = train and augment
        self.text_source = text_source
        self.pair_modalities = pair_modalities
        self.volume_slices, self.volume_table = volume_slices, volume_table
        self.partners = modality_partners(records, pair_by)
        self.pairing = summarise_pairs(records, self.partners, pair_by)

    def __len__(self) -> int:
        return len(self.records)

    def text_for(self, record: Record, rng: random.Random) -> str:
        """Caption from the labels (expert-knowledge dictionary), the report, or either."""
        use_report = bool(record.report) and (
            self.text_source == "report" or not record.labels
            or (self.text_source == "mixed" and rng.random() < 0.5))
        return record.report if use_report else build_caption(record.labels, rng, record.modality)

    def _frame_index(self, n_frames: int, gen: torch.Generator) -> int:
        """The frame of an item shown as one image: in training a random one (a 2-D image draws
        index 0), else the central one."""
        return int(torch.randint(0, n_frames, (), generator=gen)) if self.train else n_frames // 2

    def image_for(self, index: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None,
                                                                     torch.Tensor | None]:
        """Record ``index``'s preprocessed image in [0, 1] (from the cache, or decoded), its
        augmentation parameters (when augmenting) and, for a volume embedded through the adapter,
        its slices' positions (else None)."""
        record = self.records[index]
        cached = self.cache.get(index) if self.cache is not None else None
        positions = None
        if cached is not None:
            image, colour = cached
            self._frame_index(1, gen)  # the draw of a decoded 2-D image, so the later draws match it
        else:
            frames = read_frames(record, self.image_size)
            colour = frames.shape[-1] == 3
            if len(frames) > 1 and self.volume_slices > 0:
                picked = volume_slices(len(frames), self.volume_slices, gen if self.train else None)
                image = torch.stack([prepare_image(frames[i], record.modality, self.image_size)
                                     for i in picked.tolist()])
                positions = slice_positions(picked, len(frames), self.volume_table)
            else:
                image = prepare_image(frames[self._frame_index(len(frames), gen)], record.modality, self.image_size)
        params = draw_params(gen, colour=colour) if self.augment else None
        return image, params, positions

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        index, seed = key if isinstance(key, tuple) else (key, index_seed(key))
        record = self.records[index]
        rng, gen = random.Random(seed), torch.Generator().manual_seed(seed)
        try:
            image, params, positions = self.image_for(index, gen)
            item = {"image": image, "aug": params, "positions": positions, "modality": record.modality,
                    "text": self.text_for(record, rng),
                    "labels": ";".join(sorted(record.labels)), "path": str(record.image), "index": index}
        except ImageReadError as exc:
            return {"error": str(exc), "path": str(record.image)}
        candidates = self.partners[index] if self.pair_modalities else []
        if candidates:
            partner_index = candidates[rng.randrange(len(candidates))]
            partner = self.records[partner_index]
            try:
                image, params, positions = self.image_for(partner_index, gen)
                item.update(partner=image, partner_aug=params, partner_positions=positions,
                            partner_modality=partner.modality, partner_text=self.text_for(partner, rng),
                            partner_labels=";".join(sorted(partner.labels)))
            except ImageReadError as exc:
                item["partner_error"] = str(exc)
        return item


def class_weights(records: list[Record], alpha: float) -> torch.Tensor:
    """Sampling weight of each record, ``n_c ** -alpha`` for its primary label's count ``n_c``
    (unlabelled records form one class): 0 keeps the data's frequencies, 1 draws every class
    equally often, 0.5 is the square-root rebalancing of long-tailed recognition (Mahajan et al.
    2018; Kang et al. 2020, "Decoupling representation and classifier")."""
    keys = [r.labels[0] if r.labels else "" for r in records]
    counts: dict[str, int] = defaultdict(int)
    for key in keys:
        counts[key] += 1
    return torch.tensor([counts[key] ** -alpha for key in keys], dtype=torch.float64)


def index_seed(index: int) -> int:
    """Seed of an item fetched by plain index (evaluation): fixed per index."""
    return sample_seed(0, 0, index)


@dataclass
class Batch:
    """A collated batch of items: anchors first, then the partners of the anchors that have one.
    An item is one image row, or a volume's slice rows when ``layout`` is set."""

    images: torch.Tensor  # [R, 3, S, S] in [0, 1]: image rows (R = N + M without volumes)
    texts: list[str]  # N + M
    label_ids: torch.Tensor  # [N + M], -1 = unlabelled; equal ids = equal label sets
    pair_index: torch.Tensor  # [N], position of anchor i's partner, -1 if none
    labels: list[str]  # N + M label-set strings
    skipped: list[str] = field(default_factory=list)  # "path: reason" of unreadable images
    aug: torch.Tensor | None = None  # [R, P] augmentation parameters; None = no augmentation
    indices: list[int] = field(default_factory=list)  # N dataset indices of the anchors
    layout: SliceLayout | None = None  # which rows are which item's slices; None: one row an item
    # [N] bool: anchor i's modality sorts after its partner's, so the pair is contrasted as
    # (partner, anchor): every pair then sets one modality against the other (CFP vs OCT).
    pair_flip: torch.Tensor | None = None

    @property
    def n_anchors(self) -> int:
        return len(self.pair_index)

    @property
    def n_paired(self) -> int:
        """Anchors that have a partner in the batch."""
        return int((self.pair_index >= 0).sum())

    def model_input(self, device: torch.device, input_norm: str) -> torch.Tensor:
        """The images on ``device``, augmented there (when the batch carries parameters) and
        normalised as the model expects (``model.input_norm``): what its forward pass takes."""
        images = self.images.to(device, non_blocking=True)
        if self.aug is not None:
            images = augment_batch(images, self.aug)
        return to_model_input(images, input_norm)


def _layout(images: list[torch.Tensor], positions: list[torch.Tensor | None]) -> SliceLayout | None:
    """The :class:`SliceLayout` of items given as rows (2-D: [3, S, S]; volume: [K, 3, S, S])."""
    if all(p is None for p in positions):
        return None
    counts = [1 if p is None else len(p) for p in positions]
    width = max(counts)
    rows = torch.full((len(images), width), -1, dtype=torch.long)
    slots = torch.zeros((len(images), width), dtype=torch.long)
    start = 0
    for i, (count, pos) in enumerate(zip(counts, positions)):
        rows[i, :count] = torch.arange(start, start + count)
        if pos is not None:
            slots[i, :count] = pos
        start += count
    return SliceLayout(rows, slots, torch.tensor([p is not None for p in positions]))


def collate(items: list[dict]) -> Batch:
    """Stack anchors then partners; unreadable anchors are dropped and listed in ``skipped``."""
    skipped = ([it["error"] for it in items if "error" in it]
               + [it["partner_error"] for it in items if "partner_error" in it])
    anchors = [it for it in items if "error" not in it]
    paired = [it for it in anchors if "partner" in it]
    images = [it["image"] for it in anchors] + [it["partner"] for it in paired]
    positions = [it.get("positions") for it in anchors] + [it.get("partner_positions") for it in paired]
    texts = [it["text"] for it in anchors] + [it["partner_text"] for it in paired]
    labels = [it["labels"] for it in anchors] + [it["partner_labels"] for it in paired]
    pair_index, next_partner = [], len(anchors)
    for it in anchors:
        if "partner" in it:
            pair_index.append(next_partner)
            next_partner += 1
        else:
            pair_index.append(-1)
    ids = {key: i for i, key in enumerate(dict.fromkeys(k for k in labels if k))}
    label_ids = torch.tensor([ids[k] if k else -1 for k in labels], dtype=torch.long)
    layout = _layout(images, positions)
    rows = [img if pos is not None else img[None] for img, pos in zip(images, positions)]
    params = [it["aug"] for it in anchors] + [it["partner_aug"] for it in paired]
    stacked = torch.cat(rows) if rows else torch.empty(0)
    aug = None
    if params and all(p is not None for p in params):  # a volume's slices share its augmentation
        aug = torch.cat([p.expand(len(row), -1) for p, row in zip(params, rows)])
    flip = torch.tensor([it["modality"] > it["partner_modality"] if "partner" in it else False for it in anchors],
                        dtype=torch.bool)
    return Batch(stacked, texts, label_ids, torch.tensor(pair_index, dtype=torch.long), labels, skipped, aug,
                 [it["index"] for it in anchors], layout, flip)


class EpochBatchSampler(Sampler):
    """Shuffled fixed-size batches of ``(index, sample seed)``; deterministic per (seed, epoch),
    and able to start mid-epoch (``skip_batches``) for exact resumption. With ``weights`` an epoch
    is ``n`` indices drawn with replacement in proportion to them (class-balanced sampling)."""

    def __init__(self, n: int, batch_size: int, seed: int, epoch: int = 0, skip_batches: int = 0,
                 weights: torch.Tensor | None = None):
        if n < batch_size:
            raise ValueError(f"train.batch_size={batch_size} is larger than the {n} training images")
        self.n, self.batch_size, self.seed, self.epoch, self.skip_batches = n, batch_size, seed, epoch, skip_batches
        self.weights = weights

    def __len__(self) -> int:
        return self.n // self.batch_size - self.skip_batches

    def __iter__(self):
        gen = torch.Generator().manual_seed(sample_seed(self.seed, self.epoch, ORDER_STREAM))
        if self.weights is None:
            order = torch.randperm(self.n, generator=gen)
        else:
            order = torch.multinomial(self.weights, self.n, replacement=True, generator=gen)
        for b in range(self.skip_batches, self.n // self.batch_size):
            positions = range(b * self.batch_size, (b + 1) * self.batch_size)
            yield [(int(order[p]), sample_seed(self.seed, self.epoch, p)) for p in positions]
