"""Cross-modality pairing for EyeCLIP's image-image contrast (Shi et al. 2024): which images of a
site show the same eye in another modality.

A hospital exports each device's images into its own table, so images pair across every manifest
of a site, by (patient, eye); ``pair_by='study'`` also asks for the same study (visit). An image
without laterality never pairs under these keys, since its partner might be the other eye; only
``pair_by='patient'`` pairs across the eyes of a patient, when a user asks for it. Patient ids must
be the same in all of a site's manifests (and, for a pooled centralized run, unique across sites).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

from shared_model.data.manifest import Record

PAIR_BY = ("eye", "study", "patient")


def pairing_key(record: Record, pair_by: str) -> tuple[str, ...] | None:
    """The key under which ``record`` pairs, None when it cannot pair (no laterality or study)."""
    if pair_by == "patient":
        return (record.patient_id,)
    if not record.eye or (pair_by == "study" and not record.study_id):
        return None
    return (record.patient_id, record.eye) + ((record.study_id,) if pair_by == "study" else ())


def modality_partners(records: list[Record], pair_by: str = "eye") -> list[list[int]]:
    """For each record, the indices of the records of another modality under the same key."""
    if pair_by not in PAIR_BY:
        raise ValueError(f"data.pair_by must be one of {PAIR_BY}, got {pair_by!r}")
    keys = [pairing_key(r, pair_by) for r in records]
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, key in enumerate(keys):
        if key is not None:
            groups[key].append(i)
    return [[] if key is None else [j for j in groups[key] if records[j].modality != r.modality]
            for r, key in zip(records, keys)]


@dataclass
class PairingSummary:
    """How many images of a data set found a partner, and why the others did not."""

    images: int
    paired: int
    no_key: int  # images without laterality (or study, for pair_by=study)
    by_modality: dict[str, int] = field(default_factory=dict)  # paired images per modality

    def line(self) -> str:
        """A short console phrase, e.g. ``1,200 of 1,800 images (CFP 600, OCT 600)``."""
        kinds = ", ".join(f"{m} {n:,}" for m, n in sorted(self.by_modality.items()))
        text = f"{self.paired:,} of {self.images:,} images" + (f" ({kinds})" if kinds else "")
        return text + (f"; {self.no_key:,} without eye/study" if self.no_key else "")


def summarise_pairs(records: list[Record], partners: list[list[int]], pair_by: str) -> PairingSummary:
    """The :class:`PairingSummary` of :func:`modality_partners`' result."""
    paired = Counter(r.modality for r, found in zip(records, partners) if found)
    no_key = sum(pairing_key(r, pair_by) is None for r in records)
    return PairingSummary(len(records), sum(paired.values()), no_key, dict(paired))
