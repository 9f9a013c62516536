"""Image readers: JPEG/PNG/TIFF through PIL and DICOM through pydicom, to float arrays in [0, 1].

A 2-D image comes back as [H, W, C] (C = 1 for grey, 3 for colour); a multi-frame file (OCT
volume as multi-frame DICOM or multi-page TIFF) as [S, H, W, C]. 16-bit and grey images keep
their full range. Any decoding failure (truncated, corrupt, unsupported) raises
:class:`ImageReadError` naming the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, UnidentifiedImageError

if TYPE_CHECKING:
    from shared_model.data.manifest import Record

DICOM_SUFFIXES = (".dcm", ".dicom")


class ImageReadError(OSError):
    """An image file cannot be decoded."""


def summarise_unreadable(reasons: list[str], shown: int = 3) -> str:
    """``N unreadable files: first; second; third; and K more`` for distinct ``reasons`` ("path: reason")."""
    more = f"; and {len(reasons) - shown} more" if len(reasons) > shown else ""
    return f"{len(reasons)} unreadable file{'' if len(reasons) == 1 else 's'}: {'; '.join(reasons[:shown])}{more}"


def _pil_frame(frame: Image.Image) -> np.ndarray:
    mode = frame.mode
    if mode.startswith("I;16") or mode == "I":
        arr = np.asarray(frame, dtype=np.float32) / 65535.0
    elif mode == "F":
        arr = np.asarray(frame, dtype=np.float32)
        arr = (arr - arr.min()) / max(float(arr.max() - arr.min()), 1e-6)
    elif mode in ("L", "RGB"):
        arr = np.asarray(frame, dtype=np.float32) / 255.0
    elif mode in ("1", "LA"):
        arr = np.asarray(frame.convert("L"), dtype=np.float32) / 255.0
    else:  # P, RGBA, CMYK, YCbCr, ...
        arr = np.asarray(frame.convert("RGB"), dtype=np.float32) / 255.0
    return np.clip(arr, 0.0, 1.0)[..., None] if arr.ndim == 2 else np.clip(arr, 0.0, 1.0)


def _read_pil(path: Path, size_hint: int | None) -> np.ndarray:
    with Image.open(path) as img:
        if img.format == "JPEG" and size_hint:
            # DCT-domain downscaling: decode at >= 2x the target size instead of full resolution.
            img.draft(img.mode, (2 * size_hint, 2 * size_hint))
        n_frames = getattr(img, "n_frames", 1)
        frames = []
        for index in range(n_frames):
            img.seek(index)
            img.load()
            frames.append(_pil_frame(img))
    return frames[0] if n_frames == 1 else np.stack(frames)


def _read_dicom(path: Path) -> np.ndarray:
    import pydicom

    ds = pydicom.dcmread(path)
    pixels = ds.pixel_array.astype(np.float32)  # pydicom converts YBR colour to RGB
    bits = int(getattr(ds, "BitsStored", 8))
    if getattr(ds, "PixelRepresentation", 0) == 1:
        pixels = pixels + 2 ** (bits - 1)
    pixels = np.clip(pixels / (2 ** bits - 1), 0.0, 1.0)
    if getattr(ds, "PhotometricInterpretation", "") == "MONOCHROME1":
        pixels = 1.0 - pixels
    samples = int(getattr(ds, "SamplesPerPixel", 1))
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if samples == 1:
        pixels = pixels[..., None]
    return pixels if frames > 1 else pixels.reshape(pixels.shape[-3:])


def read_image(path: str | Path, size_hint: int | None = None) -> np.ndarray:
    """Decode ``path`` to float32 in [0, 1]: [H, W, C] or, for multi-frame files, [S, H, W, C].

    ``size_hint`` (the training resolution) lets JPEG decoding skip detail that resizing would drop.
    """
    path = Path(path)
    try:
        if path.suffix.lower() in DICOM_SUFFIXES:
            return _read_dicom(path)
        return _read_pil(path, size_hint)
    except FileNotFoundError as exc:
        raise ImageReadError(f"{path}: file not found") from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, AttributeError) as exc:
        raise ImageReadError(f"{path}: cannot decode image ({type(exc).__name__}: {exc})") from exc
    except Exception as exc:  # pydicom raises a variety of types for malformed data
        raise ImageReadError(f"{path}: cannot decode image ({type(exc).__name__}: {exc})") from exc


def read_frames(record: Record, size: int | None) -> np.ndarray:
    """A record's decoded frames [S, H, W, C]; a volume whose frame count differs from its
    manifest's ``frames`` is unreadable (:class:`ImageReadError` naming the file)."""
    img = read_image(record.image, size)
    frames = img if img.ndim == 4 else img[None]
    if record.is_volume and len(frames) != record.frames:
        raise ImageReadError(f"{record.image}: the manifest ({record.source}, row {record.row}) says "
                             f"{record.frames} frames, the file has {len(frames)}")
    return frames
