"""Train a DDPM: `python train.py [group=option ...] [key=value ...]` (see README.md and conf/)."""

import logging
import sys

import hydra
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

import ddpm  # noqa: F401  (registers the config resolvers)
from ddpm.config import UserError


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from ddpm.train import train  # imported here so that --help and --cfg don't pay for Lightning

    try:
        metrics = train(cfg)
    except (UserError, OmegaConfBaseException) as err:  # bad input: one message, no traceback
        logging.getLogger("train").error("%s", err)
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    return metrics.get(cfg.get("optimized_metric", ""), None)


if __name__ == "__main__":
    main()
