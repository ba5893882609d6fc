"""Train a DDPM: `python train.py [group=option ...] [key=value ...]` (see README.md and conf/)."""

import hydra
from omegaconf import DictConfig

import ddpm.tasks  # noqa: F401  (registers the config resolvers)


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float:
    """Returns the optimized metric to a sweeper (inf for a failed job, which a sweep records and survives)."""
    from ddpm.tasks.train import train_and_score  # imported here so that --help and --cfg don't pay for Lightning
    from ddpm.tasks.wrapper import run_task

    return run_task("train", train_and_score, cfg)


if __name__ == "__main__":
    main()
