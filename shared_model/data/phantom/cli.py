"""``retina-data``: generate the phantom data set, or draw a sample grid of one.

    retina-data phantom --out DIR --sites 3 --images-per-site 200 --size 64 --seed 0
    retina-data phantom --out DIR --volume-slices 32 --volume-format dicom
    retina-data grid --phantom DIR --out grid.png

:func:`add_phantom_commands` plugs both sub-commands into the ``retina-data``
parser (:mod:`shared_model.cli.data`).
"""

import argparse

from .categories import CATEGORIES
from .generate import VOLUME_FORMATS, PhantomSpec, generate_phantom
from .grid import make_grid


def run_phantom(args: argparse.Namespace) -> int:
    """``retina-data phantom``: generate, print a one-line summary, return 0."""
    spec = PhantomSpec(
        n_sites=args.sites, images_per_site=args.images_per_site,
        heldout_images=args.heldout_images, image_size=args.size, seed=args.seed,
        oct_probability=args.oct_probability, label_skew_alpha=args.alpha,
        classes=tuple(c.strip() for c in args.classes.split(",") if c.strip()),
        volume_slices=args.volume_slices, volume_format=args.volume_format,
    )
    summary = generate_phantom(spec, args.out, overwrite=args.overwrite, progress=not args.quiet)
    volumes = f" and {summary.n_volumes} OCT volumes" if summary.n_volumes else ""
    print(f"wrote {summary.n_images} images{volumes} for {len(summary.sites)} sites to "
          f"{summary.out_dir} in {summary.seconds:.1f} s")
    return 0


def run_grid(args: argparse.Namespace) -> int:
    """``retina-data grid``: write the sample grid PNG, return 0."""
    print(f"wrote {make_grid(args.phantom, args.out)}")
    return 0


def add_phantom_commands(commands: argparse._SubParsersAction) -> None:
    """Add the ``phantom`` and ``grid`` sub-commands (each sets ``func``) to ``commands``."""
    defaults = PhantomSpec()
    phantom = commands.add_parser("phantom", help="generate the procedural phantom data set")
    phantom.add_argument("--out", required=True, help="output directory")
    phantom.add_argument("--sites", type=int, default=defaults.n_sites, help="training sites")
    phantom.add_argument("--images-per-site", type=int, default=defaults.images_per_site,
                         help="eyes per training site (each: one CFP, optionally one OCT)")
    phantom.add_argument("--heldout-images", type=int, default=defaults.heldout_images,
                         help="eyes at the held-out evaluation site (0: none)")
    phantom.add_argument("--size", type=int, default=defaults.image_size, help="image size in px")
    phantom.add_argument("--seed", type=int, default=defaults.seed)
    phantom.add_argument("--oct-probability", type=float, default=defaults.oct_probability)
    phantom.add_argument("--alpha", type=float, default=defaults.label_skew_alpha,
                         help="Dirichlet concentration of site class priors (large = balanced)")
    phantom.add_argument("--classes", default=",".join(defaults.classes),
                         help=f"comma-separated subset of: {', '.join(CATEGORIES)}")
    phantom.add_argument("--volume-slices", type=int, default=defaults.volume_slices,
                         help="B-scans per OCT volume (volumes.csv beside each manifest; 0: no volumes)")
    phantom.add_argument("--volume-format", choices=sorted(VOLUME_FORMATS), default=defaults.volume_format,
                         help="multi-page TIFF or multi-frame DICOM (Ophthalmic Tomography)")
    phantom.add_argument("--overwrite", action="store_true",
                         help="write into a non-empty directory that is not a phantom output")
    phantom.add_argument("--quiet", action="store_true", help="no progress bar")
    phantom.set_defaults(func=run_phantom)

    grid = commands.add_parser("grid", help="draw one example per class (CFP and OCT)")
    grid.add_argument("--phantom", required=True, help="a phantom output directory")
    grid.add_argument("--out", required=True, help="PNG file to write")
    grid.set_defaults(func=run_grid)

