"""A site's images for the generator: decoded and preprocessed exactly as for the foundation
model (FOV crop, square resize), scaled to [-1, 1], with their condition vector and their
record index (the privacy unit of each row is looked up from it under DP-SGD)."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from shared_model.data.manifest import Record
from shared_model.data.preprocess import prepare_image
from shared_model.data.readers import ImageReadError, read_image
from synthetic.conditioning import Conditioning


class GeneratorDataset(Dataset):
    """Items: ``{"image": [3, S, S] in [-1, 1], "condition": [K + M], "index": i}`` or
    ``{"error": "path: reason"}`` for an unreadable image (skipped by :func:`collate_images`)."""

    def __init__(self, records: list[Record], image_size: int, conditioning: Conditioning):
        self.records = records
        self.image_size = image_size
        self.conditioning = conditioning

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        index = key[0] if isinstance(key, tuple) else key
        record = self.records[index]
        try:
            img = read_image(record.image, self.image_size)
        except ImageReadError as exc:
            return {"error": str(exc)}
        if img.ndim == 4:  # a volume: its central B-scan
            img = img[img.shape[0] // 2]
        image = prepare_image(img, record.modality, self.image_size) * 2 - 1
        return {"image": image, "condition": self.conditioning.vector(record.labels, record.modality), "index": index}


def collate_images(items: list[dict]) -> dict:
    """Stack readable items; ``skipped`` lists the unreadable ones."""
    good = [it for it in items if "error" not in it]
    return {"image": torch.stack([it["image"] for it in good]) if good else torch.empty(0),
            "condition": torch.stack([it["condition"] for it in good]) if good else torch.empty(0),
            "index": [it["index"] for it in good], "skipped": [it["error"] for it in items if "error" in it]}
