"""Evaluate a checkpoint: `python eval.py ckpt_path=... n_samples=... metrics=[fid,bpd]` (see conf/eval.yaml)."""

import hydra
from omegaconf import DictConfig

import ddpm.tasks  # noqa: F401  (registers the config resolvers)


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    from ddpm.tasks.evaluate import evaluate  # imported here so that --help doesn't pay for Lightning
    from ddpm.tasks.wrapper import run_task

    run_task("eval", evaluate, cfg)


if __name__ == "__main__":
    main()
