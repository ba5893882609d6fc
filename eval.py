"""Evaluate a checkpoint: `python eval.py ckpt_path=... n_samples=... metrics=[fid,bpd]` (see conf/eval.yaml)."""

import logging
import sys

import hydra
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

import ddpm  # noqa: F401  (registers the config resolvers)
from ddpm.config import UserError


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    from ddpm.evaluate import evaluate  # imported here so that --help doesn't pay for Lightning

    try:
        evaluate(cfg)
    except (UserError, OmegaConfBaseException) as err:  # bad input: one message, no traceback
        logging.getLogger("eval").error("%s", err)
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
