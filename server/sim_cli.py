"""``retina-sim``: a whole federation on this machine (Flower simulation engine), configured
with Hydra. Example: ``retina-sim federation.rounds=5 strategy=fedprox run_dir=runs/fedprox``."""

from __future__ import annotations

from shared_model.cli.errors import user_errors
from shared_model.cli.overrides import parse_overrides
from shared_model.conf import compose_app


def main(argv: list[str] | None = None) -> None:
    """Compose the config and run the simulated federation; config and input errors in one line."""
    overrides = parse_overrides("retina-sim", "RetinaFL federation simulated on this machine", "federation",
                                "strategy=fedprox", argv)
    from server.flower_runtime import FlowerRunError
    from server.run_lock import RunFolderBusy
    from server.simulation import run_simulation

    with user_errors(FlowerRunError, RunFolderBusy):
        run_simulation(compose_app("federation", overrides, console_logging=True), argv=overrides)


if __name__ == "__main__":
    main()
