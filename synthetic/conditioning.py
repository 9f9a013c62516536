"""What the generator is conditioned on: a multi-hot label set over the categories it was trained
on, and a one-hot modality; plus parsing of the label/modality mixes a user asks to sample."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch

from shared_model.config import GeneratorConfig
from shared_model.data.manifest import Record
from shared_model.prompts import CATEGORIES, get_category


@dataclass(frozen=True)
class Conditioning:
    """The condition vocabulary, fixed when the generator is built and stored with it."""

    categories: tuple[str, ...]  # canonical category keys
    modalities: tuple[str, ...]

    @classmethod
    def from_records(cls, records: list[Record]) -> Conditioning:
        categories = sorted({get_category(label).key for r in records for label in r.labels})
        return cls(tuple(categories), tuple(sorted({r.modality for r in records})))

    @classmethod
    def federated(cls, cfg: GeneratorConfig) -> Conditioning:
        """The vocabulary every site of a federated generator shares: the whole expert dictionary
        and the configured modalities (no site's data decides it)."""
        return cls(tuple(CATEGORIES), tuple(cfg.modalities))

    @property
    def size(self) -> int:
        return len(self.categories) + len(self.modalities)

    def vector(self, labels: tuple[str, ...] | list[str], modality: str) -> torch.Tensor:
        """[K + M] multi-hot labels followed by the one-hot modality."""
        out = torch.zeros(self.size)
        for label in labels:
            key = get_category(label).key
            if key not in self.categories:
                raise ValueError(f"label {label!r} ({key}) is not one the generator was trained on: "
                                 f"{', '.join(self.categories)}")
            out[self.categories.index(key)] = 1.0
        if modality not in self.modalities:
            raise ValueError(f"modality {modality!r} is not one the generator was trained on: "
                             f"{', '.join(self.modalities)}")
        out[len(self.categories) + self.modalities.index(modality)] = 1.0
        return out


def parse_mix(text: str, option: str) -> dict[str, float]:
    """``"a=0.2,b=0.5"`` -> normalised shares; every share must be a positive number."""
    mix: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        try:
            share = float(value)
        except ValueError:
            share = -1.0
        if not sep or not name.strip() or share <= 0:
            raise ValueError(f"{option}: {part!r} is not NAME=SHARE with a positive share (e.g. normal=0.5)")
        mix[name.strip()] = mix.get(name.strip(), 0.0) + share
    total = sum(mix.values())
    return {name: share / total for name, share in mix.items()}


def training_mix(records: list[Record]) -> tuple[dict[tuple[str, ...], float], dict[str, float]]:
    """The label-set and modality frequencies of the training records (the default mixes)."""
    sets = Counter(tuple(sorted(get_category(label).key for label in r.labels)) for r in records if r.labels)
    modalities = Counter(r.modality for r in records)
    return ({k: v / sum(sets.values()) for k, v in sets.items()},
            {k: v / sum(modalities.values()) for k, v in modalities.items()})
