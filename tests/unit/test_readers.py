"""Readers and preprocessing: PIL formats incl. 16-bit and grey, multi-page TIFF, DICOM
(single and multi-frame, 8 and 16 bit), corrupt files, the fundus field-of-view crop and
square resize."""

import numpy as np
import pytest
import torch
from PIL import Image

from shared_model.data.preprocess import crop_fov, fov_bbox, prepare_image, square_resize
from shared_model.data.readers import ImageReadError, read_image, summarise_unreadable


def _dicom(path, frames: np.ndarray, bits_stored=12, photometric="MONOCHROME2",
           sop_class="1.2.840.10008.5.1.4.1.1.77.1.5.4"):
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class  # default: ophthalmic tomography
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    colour = photometric == "RGB"
    ds.Rows, ds.Columns = frames.shape[1:3]
    ds.NumberOfFrames = frames.shape[0]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = (3 if colour else 1), photometric
    if colour:
        ds.PlanarConfiguration = 0
    allocated = 8 if bits_stored <= 8 else 16
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = allocated, bits_stored, bits_stored - 1, 0
    ds.PixelData = frames.astype(np.uint8 if allocated == 8 else np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)


def test_rgb_grey_and_16_bit_png(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (10, 12, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    out = read_image(tmp_path / "rgb.png")
    assert out.shape == (10, 12, 3) and np.allclose(out, rgb / 255.0)
    Image.fromarray(rgb[..., 0]).save(tmp_path / "grey.jpg", quality=100)
    assert read_image(tmp_path / "grey.jpg").shape == (10, 12, 1)
    deep = np.array([[0, 65535], [32768, 1000]], dtype=np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    out = read_image(tmp_path / "deep.png")
    assert out.shape == (2, 2, 1) and out.max() == pytest.approx(1.0) and out[1, 0, 0] == pytest.approx(0.5, abs=1e-4)


def test_multipage_tiff_is_a_volume(tmp_path):
    pages = [Image.fromarray(np.full((6, 7), 50 * i, dtype=np.uint8)) for i in range(4)]
    pages[0].save(tmp_path / "vol.tif", save_all=True, append_images=pages[1:])
    vol = read_image(tmp_path / "vol.tif")
    assert vol.shape == (4, 6, 7, 1) and vol[3].mean() == pytest.approx(150 / 255)


def test_dicom_single_and_multiframe(tmp_path):
    frames = np.stack([np.full((8, 9), 4095 * i // 2) for i in range(3)])
    _dicom(tmp_path / "oct.dcm", frames)
    vol = read_image(tmp_path / "oct.dcm")
    assert vol.shape == (3, 8, 9, 1) and vol[2].max() == pytest.approx(1.0) and vol[0].max() == 0.0
    _dicom(tmp_path / "one.dcm", frames[1:2], photometric="MONOCHROME1")
    img = read_image(tmp_path / "one.dcm")
    assert img.shape == (8, 9, 1) and img.mean() == pytest.approx(1 - 2047 / 4095, abs=1e-3)


@pytest.mark.parametrize("bits", [16, 8])
def test_multiframe_monochrome2_dicom_values(tmp_path, bits):
    import pydicom

    top = 2 ** bits - 1
    frames = np.random.default_rng(bits).integers(0, top + 1, (5, 7, 6))
    frames[0, 0, 0], frames[4, 6, 5] = 0, top  # both ends of the range
    _dicom(tmp_path / "vol.dcm", frames, bits_stored=bits)
    ds = pydicom.dcmread(tmp_path / "vol.dcm")
    assert int(ds.NumberOfFrames) == 5 and ds.BitsAllocated == bits and ds.PixelRepresentation == 0
    vol = read_image(tmp_path / "vol.dcm")
    assert vol.shape == (5, 7, 6, 1) and vol.dtype == np.float32
    assert np.allclose(vol[..., 0], frames / top, atol=1e-7)
    assert vol[0, 0, 0, 0] == 0.0 and vol[4, 6, 5, 0] == 1.0


def test_dicom_colour_fundus_photograph(tmp_path):
    rgb = np.zeros((1, 6, 5, 3), dtype=np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 100, 50
    _dicom(tmp_path / "cfp.dcm", rgb, bits_stored=8, photometric="RGB",
           sop_class="1.2.840.10008.5.1.4.1.1.77.1.5.1")  # ophthalmic photography 8 bit
    img = read_image(tmp_path / "cfp.dcm")
    assert img.shape == (6, 5, 3) and np.allclose(img[0, 0], [200 / 255, 100 / 255, 50 / 255])


def test_truncated_and_garbage_files_raise_naming_the_file(tmp_path):
    Image.fromarray(np.zeros((64, 64, 3), dtype=np.uint8) + 100).save(tmp_path / "full.jpg")
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match="cut.jpg"):
        read_image(tmp_path / "cut.jpg")
    (tmp_path / "junk.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(ImageReadError, match="junk.png: cannot decode"):
        read_image(tmp_path / "junk.png")
    (tmp_path / "junk.dcm").write_bytes(b"DICM?")
    with pytest.raises(ImageReadError, match="junk.dcm"):
        read_image(tmp_path / "junk.dcm")


def test_unreadable_files_are_summarised_by_count_naming_the_first_few():
    assert summarise_unreadable(["a.png: truncated"]) == "1 unreadable file: a.png: truncated"
    reasons = [f"{name}.png: truncated" for name in "abcde"]
    assert summarise_unreadable(reasons) == ("5 unreadable files: a.png: truncated; b.png: truncated; "
                                             "c.png: truncated; and 2 more")


def test_fov_crop_finds_the_disc():
    img = np.zeros((100, 160, 3), dtype=np.float32)
    yy, xx = np.mgrid[:100, :160]
    img[(yy - 50) ** 2 + (xx - 80) ** 2 < 45 ** 2] = [0.7, 0.3, 0.1]
    top, bottom, left, right = fov_bbox(img)
    assert abs(top - 5) <= 1 and abs(bottom - 95) <= 1 and abs(left - 35) <= 1 and abs(right - 125) <= 1
    assert crop_fov(img).shape[:2] == (bottom - top, right - left)


def test_square_resize_keeps_aspect_on_black():
    out = square_resize(torch.ones(3, 50, 100), 64)
    assert out.shape == (3, 64, 64)
    assert out[:, 0].max() == 0 and out[:, 32].min() == pytest.approx(1.0)  # letterboxed rows are black


def test_real_images_load_crop_and_resize(real_dir):
    for folder, modality in (("misc_samples", "CFP"), ("oct_kermany_heysaw", "OCT")):
        for path in sorted((real_dir / folder / "images").iterdir()):
            img = read_image(path, size_hint=64)
            tensor = prepare_image(img, modality, 64)
            assert tensor.shape == (3, 64, 64) and 0.0 <= float(tensor.min()) and float(tensor.max()) <= 1.0
            if modality == "CFP":  # the FOV crop leaves the disc filling the canvas width or height
                lum = tensor.mean(0)
                assert max((lum.mean(0) > 0.05).float().mean(), (lum.mean(1) > 0.05).float().mean()) > 0.9, path
