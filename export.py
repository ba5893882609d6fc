"""Export a checkpoint: `python export.py ckpt_path=... format=diffusers out=DIR` (see conf/export.yaml)."""

import logging
import sys

import hydra
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

import ddpm  # noqa: F401  (registers the config resolvers)
from ddpm.config import UserError


@hydra.main(version_base="1.3", config_path="conf", config_name="export")
def main(cfg: DictConfig) -> None:
    from ddpm.export import export

    try:
        export(cfg)
    except (UserError, OmegaConfBaseException) as err:  # bad input: one message, no traceback
        logging.getLogger("export").error("%s", err)
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
