"""Export a checkpoint: `python export.py ckpt_path=... format=diffusers out=DIR` (see conf/export.yaml)."""

import hydra
from omegaconf import DictConfig

import ddpm  # noqa: F401  (registers the config resolvers)
from ddpm.config import run_or_explain


@hydra.main(version_base="1.3", config_path="conf", config_name="export")
def main(cfg: DictConfig) -> None:
    from ddpm.export import export

    run_or_explain("export", export, cfg)


if __name__ == "__main__":
    main()
