"""Export a checkpoint: `python export.py ckpt_path=... format=diffusers out=DIR` (see conf/export.yaml)."""

import hydra
from omegaconf import DictConfig

import ddpm.tasks  # noqa: F401  (registers the config resolvers)


@hydra.main(version_base="1.3", config_path="conf", config_name="export")
def main(cfg: DictConfig) -> None:
    from ddpm.tasks.export import export
    from ddpm.tasks.wrapper import run_task

    run_task("export", export, cfg)


if __name__ == "__main__":
    main()
