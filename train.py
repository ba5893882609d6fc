"""Train a DDPM: `python train.py [group=option ...] [key=value ...]` (see README.md and conf/)."""

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

import ddpm  # noqa: F401  (registers the config resolvers)
from ddpm.config import UserError

log = logging.getLogger("train")


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float:
    """Returns the optimized metric to a sweeper (inf for a failed job, which a sweep records and survives)."""
    from ddpm.preemption import Interrupted
    from ddpm.sweep import write_job_metrics
    from ddpm.train import train  # imported here so that --help and --cfg don't pay for Lightning

    sweeping = HydraConfig.get().mode == RunMode.MULTIRUN and not cfg.get("sweep_fail_fast", False)
    try:
        metrics = train(cfg)
    except Interrupted as err:  # SIGTERM / SIGINT: state saved, metrics.json says interrupted; a sweep stops too
        log.error("%s", err)
        print(f"interrupted: {err}", file=sys.stderr)
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            from ddpm.sweep import summarize

            summarize(Path(HydraConfig.get().sweep.dir))
        sys.exit(err.exit_code)
    except (UserError, OmegaConfBaseException) as err:  # bad input: one message, no traceback
        log.error("%s", err)
        if not sweeping:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)
        write_job_metrics(Path(cfg.paths.output_dir), {}, "failed", str(err))
        return float("inf")
    except Exception as err:
        if not sweeping:
            raise
        log.exception("job failed; the sweep goes on (set sweep_fail_fast=true to stop it)")
        write_job_metrics(Path(cfg.paths.output_dir), {}, "failed", f"{type(err).__name__}: {err}")
        return float("inf")
    if cfg.optimized_metric not in metrics:  # e.g. FID turned off: a sweeper must still get a number
        log.warning("optimized_metric %s was not logged; returning inf to the sweeper", cfg.optimized_metric)
        return float("inf")
    return metrics[cfg.optimized_metric]


if __name__ == "__main__":
    main()
