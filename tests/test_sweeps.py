"""Sweeps and recipes: multirun with a summary table, failure tolerance, Optuna, launchers, the DDPM recipe."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ddpm.errors import ConfigError
from ddpm.tasks.train import check_multirun_devices
from tests.conftest import ROOT, compose

pytestmark = pytest.mark.slow  # end-to-end: Hydra multiruns

TINY = ["scheduler.num_timesteps=20", "trainer.max_steps=3", "trainer.val_check_interval=3", "logger=csv",
        "callbacks.sample_eval.n_grid=4", "callbacks.sample_eval.fid_samples=8", "callbacks.sample_eval.bpd_images=0",
        "callbacks.sample_eval.chain_frames=0", "callbacks.progress_bar.refresh_rate=0", "fid.classifier.steps=20"]


def run_multirun(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "train.py"), "-m", f"paths.log_dir={tmp_path / 'logs'}",
                           f"fid.cache_dir={tmp_path / 'cache'}", *TINY, *args], cwd=tmp_path, capture_output=True,
                          text=True, env={**os.environ, "WANDB_MODE": "offline"}, timeout=900)


def sweep_dir(tmp_path: Path) -> Path:
    return sorted((tmp_path / "logs" / "train" / "multiruns").iterdir())[-1]


@pytest.mark.slow
def test_multirun_grid_gives_four_runs_and_a_summary(tmp_path):
    proc = run_multirun(["scheduler=linear,cosine", "model=unet_tiny,unet_small"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep = sweep_dir(tmp_path)
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir() and p.name.isdigit())
    assert jobs == ["0", "1", "2", "3"]
    for job in jobs:
        assert (sweep / job / "checkpoints" / "last.ckpt").is_file() and (sweep / job / "metrics.json").is_file()
    rows = list(csv.DictReader(open(sweep / "summary.csv")))
    assert len(rows) == 4 and all(r["status"] == "success" for r in rows)
    assert {r["swept"] for r in rows} == {f"scheduler={s} model={m}" for s in ("linear", "cosine")
                                              for m in ("unet_tiny", "unet_small")}
    assert all(float(r["val/fd_resnet"]) > 0 for r in rows)
    assert "Sweep summary" in proc.stdout
    from ddpm.training.compute import read_evaluations

    for job in jobs:  # quality against compute: every evaluation with the images and training seconds behind it
        evals = read_evaluations(sweep / job)
        assert evals and all(e["val/images_seen"] == e["step"] * 128 and e["val/train_seconds"] > 0 for e in evals)
        assert all(e["val/fd_resnet"] > 0 for e in evals)
    assert (sweep / "quality_vs_seconds.png").stat().st_size > 1000 and "Quality against compute" in proc.stdout


@pytest.mark.slow
def test_a_failing_job_does_not_kill_the_sweep(tmp_path):
    proc = run_multirun(["model=unet_tiny", "data.image_size=8,9"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {r["swept"]: r for r in csv.DictReader(open(sweep_dir(tmp_path) / "summary.csv"))}
    assert rows["data.image_size=8"]["status"] == "success"
    failed = rows["data.image_size=9"]
    assert failed["status"] == "failed" and "cannot be halved" in failed["error"]


@pytest.mark.slow
def test_optuna_runs_two_trials_and_writes_best_parameters(tmp_path):
    proc = run_multirun(["hparams_search=ddpm_optuna", "hydra.sweeper.n_trials=2",
                         "hydra.sweeper.sampler.n_startup_trials=2"],
                        tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = yaml.safe_load(open(sweep_dir(tmp_path) / "optimization_results.yaml"))
    assert {"optimizer.lr", "module.ema_decay", "scheduler", "model"} <= set(results["best_params"])
    assert results["best_value"] > 0
    assert len(list(csv.DictReader(open(sweep_dir(tmp_path) / "summary.csv")))) == 2


@pytest.mark.slow
def test_joblib_launcher_runs_two_jobs_in_parallel(tmp_path):
    proc = run_multirun(["launcher=joblib", "model=unet_tiny", "seed=1,2"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Joblib" in proc.stdout + proc.stderr
    rows = list(csv.DictReader(open(sweep_dir(tmp_path) / "summary.csv")))
    assert sorted(r["swept"] for r in rows) == ["seed=1", "seed=2"]


def test_submitit_slurm_config_composes():
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = hydra_compose(config_name="train", overrides=["launcher=slurm", "hydra.launcher.partition=gpu"],
                            return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher") and launcher.gpus_per_node == 1 and launcher.partition == "gpu"


def test_multirun_with_multi_gpu_ddp_is_refused():
    cfg = compose(["trainer=ddp"])
    with pytest.raises(ConfigError, match="launcher"):
        check_multirun_devices(cfg, {"sweep": "x", "overrides": [], "job": 0})
    check_multirun_devices(cfg, None)  # a single multi-GPU run is fine
    check_multirun_devices(compose(["trainer=gpu"]), {"sweep": "x", "overrides": [], "job": 0})


def test_ddpm_cifar10_experiment_is_the_paper_recipe():
    """Every number of docs/math.md §7 (Ho et al. 2020, CIFAR-10)."""
    cfg = compose(["experiment=ddpm_cifar10"])
    assert cfg.data.name == "cifar10" and cfg.data.random_flip is True and cfg.data.batch_size == 128
    s = cfg.scheduler
    assert s._target_ == "ddpm.core.schedules.linear_betas" and s.num_timesteps == 1000
    assert s.beta_start == 1e-4 and s.beta_end == 0.02 and s.scale_to_num_timesteps is False
    m = cfg.model
    assert (m.base_channels, list(m.channel_mult), m.num_res_blocks, list(m.attention_resolutions), m.dropout) == \
        (128, [1, 2, 2, 2], 2, [16], 0.1)
    assert cfg.module.variance_type == "fixedlarge" and cfg.module.lr_warmup_steps == 5000
    assert cfg.module.ema_decay == 0.9999
    assert cfg.module.ema_warmup is False
    o = cfg.optimizer
    assert o._target_ == "torch.optim.Adam" and o.lr == 2e-4 and o.eps == 1e-8 and list(o.betas) == [0.9, 0.999]
    assert o.weight_decay == 0.0
    t = cfg.trainer
    assert t.max_steps == 800_000 and t.gradient_clip_val == 1.0 and t.gradient_clip_algorithm == "norm"
    assert cfg.sampler._target_ == "ddpm.core.samplers.ancestral.AncestralSampler" and cfg.sampler.clip_denoised is True
    assert cfg.fid.feature == "inception" and cfg.fid.reference_split == "train"
    assert cfg.callbacks.sample_eval.fid_samples == 50_000 and cfg.optimized_metric == "val/fid"
