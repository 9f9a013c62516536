"""``retina-sim``: a whole federation on this machine (Flower simulation engine), configured
with Hydra. Example: ``retina-sim federation.rounds=5 strategy=fedprox run_dir=runs/fedprox``."""

import hydra
from omegaconf import DictConfig, OmegaConf

from shared_model.cli.errors import user_errors
from shared_model.conf import register_configs

register_configs()


@hydra.main(config_path="pkg://shared_model.conf", config_name="federation", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """Compose the config and run the simulated federation."""
    from server.flower_runtime import FlowerRunError
    from server.rounds import QuorumError
    from server.simulation import run_simulation

    with user_errors(FlowerRunError, QuorumError):
        run_simulation(OmegaConf.to_object(cfg))


if __name__ == "__main__":
    main()
