"""``retina-sim``: a whole federation on this machine (Flower simulation engine), configured
with Hydra. Example: ``retina-sim federation.rounds=5 strategy=fedprox run_dir=runs/fedprox``."""

import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from shared_model.cli.errors import hydra_cli, user_errors
from shared_model.conf import register_configs

register_configs()


@hydra.main(config_path="pkg://shared_model.conf", config_name="federation", version_base="1.3")
def run(cfg: DictConfig) -> None:
    """Compose the config and run the simulated federation."""
    from server.flower_runtime import FlowerRunError
    from server.rounds import QuorumError
    from server.run_lock import RunFolderBusy
    from server.simulation import run_simulation

    with user_errors(FlowerRunError, QuorumError, RunFolderBusy):
        run_simulation(OmegaConf.to_object(cfg), argv=sys.argv[1:])


def main() -> None:
    """The console script: :func:`run`, with config errors reported in one line."""
    hydra_cli(run)


if __name__ == "__main__":
    main()
