"""``retina-data``: make, check and convert site data.

  retina-data phantom --out data/phantom --sites 3 --images-per-site 300 --size 64
  retina-data grid --phantom data/phantom --out docs/img/phantom_grid.png
  retina-data validate site.csv [more.csv ...] [--no-images]
  retina-data import-flair labels.csv --out manifest.csv [--image-root DIR] [--modality OCT]
  retina-data import-folders ROOT --out manifest.csv [--modality CFP]
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from rich.console import Console


def _image_summary(unreadable: list[str], n_records: int, opened: bool) -> str:
    if not opened:
        return "images not opened (--no-images)"
    return f"{len(unreadable)} of {n_records} images unreadable" if unreadable else "every image opens"


def _validate(args: argparse.Namespace) -> int:
    from rich.markup import escape

    from shared_model.data.manifest import ManifestError, load_manifest, summarise_issues, unreadable_images

    console, status = Console(), 0
    logging.getLogger("shared_model.data.manifest").setLevel(logging.ERROR)  # issues are printed below
    for path in args.manifests:
        try:
            manifest = load_manifest(path, strict=False)
        except ManifestError as exc:
            for issue in exc.issues:
                console.print(f"[red]{escape(str(issue))}[/red]", highlight=False, soft_wrap=True)
            console.print(f"[red]{escape(str(exc))}[/red]", highlight=False, soft_wrap=True)
            status = 1
            continue
        unreadable = unreadable_images(manifest.records) if args.images else []
        for problem in [*map(str, manifest.issues), *unreadable]:
            console.print(f"[red]{escape(problem)}[/red]", highlight=False, soft_wrap=True)
        splits = {s: len(manifest.select(s)) for s in ("train", "val", "test")}
        summary = summarise_issues(manifest.issues, manifest.n_rows) if manifest.issues else "all rows valid"
        console.print(f"{path}: {len(manifest.records)} usable rows {splits}; {summary}; "
                      f"{_image_summary(unreadable, len(manifest.records), args.images)}", highlight=False,
                      soft_wrap=True)
        status = status or (1 if manifest.issues or unreadable else 0)
    return status


def _write_table(table, out: Path) -> int:
    from shared_model.atomic_files import atomic_path
    from shared_model.data.manifest import validate_table

    out.parent.mkdir(parents=True, exist_ok=True)
    manifest = validate_table(table, out, out.parent)  # refuse to write a manifest that would not load
    with atomic_path(out) as tmp:
        table.to_csv(tmp, index=False)
    Console().print(f"wrote {out}: {len(manifest.records)} rows")
    return 0


def _import_flair(args: argparse.Namespace) -> int:
    from shared_model.data.adapters import from_flair_csv

    return _write_table(from_flair_csv(args.csv, args.out.parent, args.image_root, args.modality), args.out)


def _import_folders(args: argparse.Namespace) -> int:
    from shared_model.data.adapters import from_class_folders

    return _write_table(from_class_folders(args.root, args.out.parent, args.modality), args.out)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``retina-data`` (phantom sub-commands come from the phantom package)."""
    from shared_model.data.phantom.cli import add_phantom_commands

    parser = argparse.ArgumentParser(prog="retina-data", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    add_phantom_commands(commands)
    validate = commands.add_parser("validate", help="check manifests, open every image, list every bad row")
    validate.add_argument("manifests", nargs="+", type=Path)
    validate.add_argument("--no-images", dest="images", action="store_false",
                          help="check the table only, without opening the images")
    validate.set_defaults(func=_validate)
    flair = commands.add_parser("import-flair", help="FLAIR-style CSV (image, categories) -> manifest")
    flair.add_argument("csv", type=Path)
    flair.add_argument("--out", type=Path, required=True)
    flair.add_argument("--image-root", type=Path, default=None)
    flair.add_argument("--modality", default="CFP")
    flair.set_defaults(func=_import_flair)
    folders = commands.add_parser("import-folders", help="ROOT/<class>/<image> -> manifest")
    folders.add_argument("root", type=Path)
    folders.add_argument("--out", type=Path, required=True)
    folders.add_argument("--modality", default="CFP")
    folders.set_defaults(func=_import_folders)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (1: a manifest has issues; 2: an input was refused)."""
    from shared_model.cli.errors import user_errors

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    with user_errors():
        return args.func(args)

if __name__ == "__main__":
    sys.exit(main())
