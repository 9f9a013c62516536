"""Decoded-image cache (``data.cache_dir``): a site's training images decoded, FOV-cropped and
resized once, kept at training resolution as uint8 ``[N, S, S, 3]`` in a memory-mapped ``.npy``
file, so a loader worker copies pixels instead of decoding; augmentation stays per batch and random.

One cache per (label, image size, digest), named ``LABEL-SIZEpx-DIGEST.npy`` with its index
``.json``. The digest covers the preprocessing version (:data:`shared_model.data.preprocess.VERSION`),
the image size and, per record in order, the image path, its modality (which decides the FOV
crop), its frame count and the file's size and modification time: adding, removing, reordering or
re-pointing rows, or replacing an image file, gives a new cache; editing labels or reports does
not (the pixels are the same). A fill writes a temporary file and renames it, and the index is
written last, so an interrupted fill never leaves a cache that opens; an unreadable, truncated or
mismatched cache file is named in a warning and rebuilt. Once a new cache is complete, older
ones of the same label and size in the folder are removed.

Decoded at each use instead, as without the cache: multi-frame files (OCT volumes, whose slices
are drawn per sample), images of more than 8 bits per channel (16-bit PNG/TIFF, DICOM: they keep
their full range) and files unreadable at fill time (reported whenever drawn). A cached image
differs from a fresh decode only by rounding to uint8: at most 0.5/255 per pixel, half the
8-bit source's own quantisation step.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch.utils.data import DataLoader, Dataset

from shared_model.atomic_files import atomic_path, write_json_atomic
from shared_model.data import preprocess
from shared_model.data.readers import ImageReadError, read_frames

if TYPE_CHECKING:
    from shared_model.data.manifest import Record

log = logging.getLogger(__name__)

FORMAT = 1  # layout of the cache and its index


def cache_digest(records: list[Record], image_size: int) -> str:
    """Hex digest of everything that decides the cached pixels of ``records`` at ``image_size``."""
    digest = hashlib.sha256(f"retinafl decoded cache {FORMAT} {preprocess.VERSION} {image_size}".encode())
    for record in records:
        try:
            stat = record.image.stat()
            stamp = f"{stat.st_size} {stat.st_mtime_ns}"
        except OSError:
            stamp = "missing"
        digest.update(f"\n{os.path.abspath(record.image)}\t{record.modality}\t{record.frames}\t{stamp}".encode())
    return digest.hexdigest()


def eight_bit(frame: np.ndarray) -> bool:
    """Whether a decoded frame in [0, 1] holds 8-bit values only (k / 255), so uint8 keeps them."""
    scaled = frame * 255.0
    return bool(np.abs(scaled - np.rint(scaled)).max() < 1e-3)


class _Decoder(Dataset):
    """Item ``i``: ``(i, [S, S, 3] uint8 preprocessed image, source channels)``, or ``(i, None, 0)``
    for a record that bypasses the cache."""

    def __init__(self, records: list[Record], image_size: int):
        self.records, self.image_size = records, image_size

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | None, int]:
        record = self.records[index]
        if not record.is_volume:
            try:
                frames = read_frames(record, self.image_size)
            except ImageReadError:
                return index, None, 0  # the data set reports it whenever it is drawn
            if len(frames) == 1 and eight_bit(frames[0]):
                image = preprocess.prepare_image(frames[0], record.modality, self.image_size)
                pixels = (image * 255).round().to(torch.uint8).permute(1, 2, 0).contiguous()
                return index, pixels, frames.shape[-1]
        return index, None, 0


class DecodedCache:
    """A complete cache, opened read-only in each process that reads it (loader workers included)."""

    def __init__(self, path: Path, channels: list[int], image_size: int):
        self.path, self.channels, self.image_size = path, channels, image_size
        self._pixels: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.channels)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_pixels": None}  # a worker maps the file itself

    @property
    def cached(self) -> int:
        """How many records the cache holds (the others are decoded at each use)."""
        return sum(1 for c in self.channels if c)

    def get(self, index: int) -> tuple[torch.Tensor, bool] | None:
        """Record ``index``'s preprocessed image [3, S, S] in [0, 1] and whether its source is in
        colour; None when the record bypasses the cache."""
        channels = self.channels[index]
        if not channels:
            return None
        if self._pixels is None:
            self._pixels = np.load(self.path, mmap_mode="r")
        pixels = torch.from_numpy(np.array(self._pixels[index])).permute(2, 0, 1)
        return pixels.to(torch.float32, memory_format=torch.contiguous_format).div_(255), channels == 3


def _paths(cache_dir: Path, name: str) -> tuple[Path, Path]:
    return cache_dir / f"{name}.npy", cache_dir / f"{name}.json"


def _open(cache_dir: Path, name: str, digest: str, n: int, image_size: int) -> DecodedCache | None:
    """The cache ``name`` if it is complete and matches; None (with a warning naming the damaged
    file) otherwise."""
    array_path, index_path = _paths(cache_dir, name)
    if not index_path.is_file():
        return None
    try:
        index = json.loads(index_path.read_text())
        pixels = np.load(array_path, mmap_mode="r")
    except (OSError, ValueError, EOFError) as exc:
        log.warning("decoded cache %s or %s is unreadable (%s); rebuilding it", index_path, array_path, exc)
        return None
    expected = {"format": FORMAT, "digest": digest, "image_size": image_size}
    if ({k: index.get(k) for k in expected} != expected or len(index.get("channels", ())) != n
            or pixels.dtype != np.uint8 or pixels.shape != (n, image_size, image_size, 3)):
        log.warning("decoded cache %s does not match its index %s (%s %s for %d images at %d px); rebuilding it",
                    array_path, index_path, pixels.dtype, pixels.shape, n, image_size)
        return None
    return DecodedCache(array_path, [int(c) for c in index["channels"]], image_size)


def _fill(records: list[Record], image_size: int, cache_dir: Path, name: str, digest: str, workers: int,
          progress: bool) -> DecodedCache:
    """Decode every record once into a new cache file (temporary file, then renamed; index last)."""
    array_path, index_path = _paths(cache_dir, name)
    index_path.unlink(missing_ok=True)  # a cache opens only with the index of its own complete fill
    shape = (len(records), image_size, image_size, 3)
    needed = sum(not r.is_volume for r in records) * image_size * image_size * 3
    free = shutil.disk_usage(cache_dir).free
    if needed > free:
        raise OSError(f"data.cache_dir: the decoded cache of {len(records):,} images at {image_size} px needs "
                      f"{needed / 1e9:.2f} GB, {cache_dir} has {free / 1e9:.2f} GB free; free some space or "
                      "unset data.cache_dir")
    channels = [0] * len(records)
    loader = DataLoader(_Decoder(records, image_size), batch_size=None, num_workers=workers)
    columns = (TextColumn("[bold]{task.description}"), BarColumn(bar_width=12), MofNCompleteColumn(),
               TimeElapsedColumn())
    with atomic_path(array_path) as tmp, Progress(*columns, disable=not progress) as bar:
        task = bar.add_task(f"decoding into {array_path.name}", total=len(records))
        pixels = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
        for i, image, source_channels in loader:
            if image is not None:
                pixels[i] = image.numpy()
                channels[i] = source_channels
            bar.advance(task)
        pixels.flush()
        del pixels
    write_json_atomic(index_path, {"format": FORMAT, "digest": digest, "image_size": image_size,
                                   "channels": channels})
    return DecodedCache(array_path, channels, image_size)


def open_cache(records: list[Record], image_size: int, cache_dir: str | Path, label: str = "train",
               workers: int = 0, progress: bool = False) -> DecodedCache:
    """The decoded cache of ``records`` at ``image_size`` in ``cache_dir``: the valid one there, or
    a new one filled in one pass (``workers`` loader processes, a progress bar when ``progress``),
    after which older caches of the same ``label`` (the site) and size in the folder are removed."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    prefix = f"{re.sub(r'[^A-Za-z0-9_-]', '_', label)}-{image_size}px-"
    digest = cache_digest(records, image_size)
    name = prefix + digest[:16]
    cache = _open(cache_dir, name, digest, len(records), image_size)
    if cache is None:
        cache = _fill(records, image_size, cache_dir, name, digest, workers, progress)
        for stale in sorted(cache_dir.glob(f"{prefix}*")):
            if stale.stem != name:
                log.info("removing the outdated decoded cache %s", stale)
                stale.unlink(missing_ok=True)
    log.info("decoded cache %s: %s of %s images (the rest are decoded at each use)", cache.path,
             f"{cache.cached:,}", f"{len(records):,}")
    return cache
