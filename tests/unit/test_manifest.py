"""Manifest validation: one clear error per bad row and field, a summary, lenient mode."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from shared_model.data.manifest import ManifestError, expand_manifest_paths, load_manifest, unreadable_images

COLUMNS = ["image", "patient_id", "eye", "modality", "study_id", "labels", "report", "split"]


def _write(tmp_path: Path, rows: list[list[str]], name="site.csv", columns=COLUMNS) -> Path:
    (tmp_path / "images").mkdir(exist_ok=True)
    for i in range(3):
        Image.fromarray(np.full((8, 8, 3), 40 * i, dtype=np.uint8)).save(tmp_path / "images" / f"ok{i}.png")
    path = tmp_path / name
    pd.DataFrame(rows, columns=columns).to_csv(path, index=False)
    return path


GOOD = [["images/ok0.png", "p1", "OD", "CFP", "s1", "moderate NPDR", "", "train"],
        ["images/ok1.png", "p1", "left", "oct", "s1", "DME;CNV", "Cysts.", "val"],
        ["images/ok2.png", "p2", "", "CFP", "", "", "Normal fundus.", ""]]


def test_valid_manifest_normalises_fields(tmp_path):
    m = load_manifest(_write(tmp_path, GOOD))
    a, b, c = m.records
    assert a.labels == ("moderate_npdr",) and a.eye == "OD" and a.image.is_file()
    assert b.modality == "OCT" and b.eye == "OS" and b.labels == ("dme", "cnv") and b.split == "val"
    assert c.split == "train" and c.labels == () and c.report == "Normal fundus."
    assert [r.row for r in m.records] == [1, 2, 3] and m.select("val") == [b]


def test_each_bad_row_gets_one_named_error_and_a_summary(tmp_path):
    rows = GOOD + [
        ["images/missing.png", "p3", "OD", "CFP", "", "normal", "", "train"],
        ["images/ok0.png", "p4", "OD", "CFP", "", "normal", "", "train"],
        ["images/ok1.png", "p5", "OD", "XRAY", "", "normal", "", "train"],
        ["images/ok2.png", "p6", "OD", "CFP", "", "", "", "train"],
        ["images/ok2.png", "p7", "OD", "CFP", "", "glaucomma", "", "test"],
    ]
    path = _write(tmp_path, rows[:5] + [rows[5]] + [["images/ok1.png", "p8", "OD", "CFP", "", "", "", "train"]]
                  + [rows[7]])
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    text = str(info.value)
    assert f"{path}: row 4, field 'image': file not found" in text
    assert "row 5, field 'image': duplicate path 'images/ok0.png' (first at row 1)" in text
    assert "row 6, field 'modality': unknown modality 'XRAY'" in text
    assert "row 7, field 'labels': both labels and report are empty" in text
    assert "glaucomma" in text and "glaucoma" in text  # the suggestion
    assert "rows invalid" in text and len(info.value.issues) >= 5


def test_lenient_mode_drops_and_counts_bad_rows(tmp_path, caplog):
    path = _write(tmp_path, GOOD + [["images/nope.png", "p3", "OD", "CFP", "", "normal", "", "train"]])
    m = load_manifest(path, strict=False)
    assert len(m.records) == 3 and len(m.issues) == 1 and m.n_rows == 4
    assert "1 of 4 rows invalid (1 missing file)" in caplog.text


def test_missing_columns_and_unparsable_files(tmp_path):
    path = _write(tmp_path, [r[:2] for r in GOOD], columns=COLUMNS[:2])
    with pytest.raises(ManifestError, match="missing column\\(s\\) modality, labels, report"):
        load_manifest(path)
    with pytest.raises(ManifestError, match="manifest not found"):
        load_manifest(tmp_path / "nowhere.csv")
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not parquet at all")
    with pytest.raises(ManifestError, match="bad.parquet: cannot be parsed"):
        load_manifest(bad)


def test_parquet_manifest(tmp_path):
    csv = _write(tmp_path, GOOD)
    pq = tmp_path / "site.parquet"
    pd.read_csv(csv, dtype=str, keep_default_na=False).to_parquet(pq)
    assert load_manifest(pq).records[1].labels == ("dme", "cnv")


def test_manifest_globs_are_sorted_and_must_match(tmp_path):
    for site in ("site_1", "site_0"):
        (tmp_path / site).mkdir()
        (tmp_path / site / "manifest.csv").write_text("x")
    found = expand_manifest_paths([str(tmp_path / "site_*" / "manifest.csv")])
    assert [p.parent.name for p in found] == ["site_0", "site_1"]
    with pytest.raises(ManifestError, match="no manifest matches"):
        expand_manifest_paths([str(tmp_path / "none_*" / "manifest.csv")])


def test_a_byte_that_is_not_utf8_is_named_by_line_column_and_offset(tmp_path):
    path = _write(tmp_path, GOOD)
    lines = path.read_bytes().split(b"\n")
    lines[2] = lines[2].replace(b"Cysts.", b"Cysts \xe9.")  # Latin-1 e-acute in row 2's report
    path.write_bytes(b"\n".join(lines))
    column = lines[2].index(b"\xe9") + 1
    offset = len(lines[0]) + len(lines[1]) + 2 + column - 1
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    assert str(info.value) == (f"{path}: line 3 (the header is line 1), column {column} "
                               f"(byte offset {offset}): byte 0xe9 is not UTF-8; a manifest must be UTF-8 text: "
                               "re-save it as UTF-8 (e.g. iconv -f latin1 -t utf-8)")


def test_utf8_with_a_byte_order_mark_loads(tmp_path):
    path = _write(tmp_path, GOOD)
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert load_manifest(path).records[0].labels == ("moderate_npdr",)


def _with_broken_images(tmp_path: Path) -> Path:
    path = _write(tmp_path, GOOD + [["images/empty.png", "p3", "OD", "CFP", "", "normal", "", "train"],
                                    ["images/cut.png", "p4", "OD", "CFP", "", "normal", "", "train"]])
    (tmp_path / "images" / "empty.png").write_bytes(b"")
    whole = (tmp_path / "images" / "ok0.png").read_bytes()
    (tmp_path / "images" / "cut.png").write_bytes(whole[: len(whole) // 2])
    return path


def test_unreadable_images_names_each_file_with_its_row(tmp_path):
    path = _with_broken_images(tmp_path)
    images = tmp_path / "images"
    assert unreadable_images(load_manifest(path).records) == [
        f"{path}: row {row}, field 'image': {images / name}: cannot decode image (UnidentifiedImageError: "
        f"cannot identify image file '{images / name}')" for row, name in ((4, "empty.png"), (5, "cut.png"))]


def test_validate_opens_every_image_unless_told_not_to(tmp_path, capsys):
    from shared_model.cli.data import main

    path = _with_broken_images(tmp_path)
    assert main(["validate", str(path)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert [line.split(": ")[1] for line in out[:2]] == ["row 4, field 'image'", "row 5, field 'image'"]
    assert out[2] == (f"{path}: 5 usable rows {{'train': 4, 'val': 1, 'test': 0}}; all rows valid; "
                      "2 of 5 images unreadable")
    assert main(["validate", "--no-images", str(path)]) == 0
    assert capsys.readouterr().out.strip() == (f"{path}: 5 usable rows {{'train': 4, 'val': 1, 'test': 0}}; all rows "
                                               "valid; images not opened (--no-images)")
