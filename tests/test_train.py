"""End to end: `python train.py` through Hydra on digits, resume from last.ckpt, sample; and every bad
input ends with one clear message before training starts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ddpm.config import ConfigError
from ddpm.module import DiffusionModule
from ddpm.train import train
from tests.conftest import ROOT, compose

pytestmark = pytest.mark.slow

FAST = ["model=unet_tiny", "scheduler.num_timesteps=50", "callbacks.sample_eval.n_grid=16", "callbacks.sample_eval.nrow=4",
        "callbacks.sample_eval.fid_samples=0", "callbacks.sample_eval.bpd_images=0", "callbacks.progress_bar.refresh_rate=0",
        "module.lr_warmup_steps=5"]


def run_cli(args: list[str], tmp_path: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "WANDB_MODE": "offline", **(env or {})}
    return subprocess.run([sys.executable, str(ROOT / "train.py"), f"paths.log_dir={tmp_path / 'logs'}", *args],
                          cwd=tmp_path, capture_output=True, text=True, env=full_env, timeout=600)


def run_dir(tmp_path: Path) -> Path:
    dirs = sorted((tmp_path / "logs" / "train" / "runs").iterdir())
    return dirs[-1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One real CLI run: digits + unet_tiny, 30 steps, validation (and a sample grid) at step 20."""
    tmp = tmp_path_factory.mktemp("cli")
    proc = run_cli([*FAST, "logger=csv", "trainer.max_steps=30", "trainer.val_check_interval=20",
                    "callbacks.model_checkpoint.every_n_train_steps=20"], tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp, run_dir(tmp)


def test_cli_run_leaves_checkpoint_config_and_samples(trained):
    _, out = trained
    assert (out / "checkpoints" / "last.ckpt").is_file()
    assert (out / "checkpoints" / "step_0000020.ckpt").is_file()
    assert (out / "config.yaml").is_file() and (out / ".hydra" / "config.yaml").is_file()
    assert "${" not in (out / "config.yaml").read_text()  # resolved
    assert (out / "samples" / "final.png").is_file() and (out / "samples" / "step_0000020.png").is_file()
    assert (out / "samples" / "step_0000020_chain.png").is_file() and (out / "samples" / "forward_process.png").is_file()
    from PIL import Image

    # 16 samples of 8x8 upscaled 4x in a 4x4 grid with 4-pixel padding
    assert Image.open(out / "samples" / "final.png").size == (4 * 32 + 5 * 4,) * 2
    metrics = (out / "csv" / "version_0" / "metrics.csv").read_text()
    assert "train/loss" in metrics and "val/loss" in metrics and "lr-Adam" in metrics


def test_last_ckpt_is_final_step_and_loads_weights_only(trained):
    _, out = trained
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 30  # not 20: LastCheckpoint writes the final step
    hp = ckpt["hyper_parameters"]
    assert hp["model"]["_target_"] == "ddpm.unet.UNet" and hp["image_shape"] == [1, 8, 8]
    assert any(k.startswith("ema.module.") for k in ckpt["state_dict"])
    assert not any(k.startswith("diffusion.") for k in ckpt["state_dict"])  # schedule is config, not weights
    # the EMA differs from the raw weights after training
    sd = ckpt["state_dict"]
    assert not torch.equal(sd["ema.module.conv_in.weight"], sd["net.conv_in.weight"])


def test_checkpoint_reloads_and_samples(trained):
    _, out = trained
    module = DiffusionModule.load_from_checkpoint(out / "checkpoints" / "last.ckpt", map_location="cpu",
                                                  weights_only=True)
    module.sampler.progress = False
    a = module.sample(4, seed=1).images
    b = module.sample(4, seed=1).images
    assert a.shape == (4, 1, 8, 8) and torch.equal(a, b)
    assert a.min() >= -1.5 and torch.isfinite(a).all()


def test_resume_from_last_ckpt_continues_steps(trained, tmp_path):
    _, out = trained
    proc = run_cli([*FAST, "logger=csv", "trainer.max_steps=40", f"ckpt_path={out / 'checkpoints' / 'last.ckpt'}"],
                   tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    new = run_dir(tmp_path)
    ckpt = torch.load(new / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 40
    assert (new / "samples" / "final.png").is_file()


def test_checkpoint_from_other_model_is_refused(trained, tmp_path):
    _, out = trained
    proc = run_cli([*[a for a in FAST if not a.startswith("model=")], "model=unet_small", "logger=none",
                    f"ckpt_path={out / 'checkpoints' / 'last.ckpt'}"], tmp_path)
    assert proc.returncode == 2
    assert "different model config" in proc.stderr and "model.base_channels: checkpoint 16, this run 32" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["model=unet_huge"], "Could not find 'model/unet_huge'"),
        (["data.image_size=9"], "image_size 9 cannot be halved 1 times evenly"),
        (["model.attention_resolutions=[16]"], r"attention resolution\(s\) \[16\] never occur"),
        (["scheduler.num_timesteps=0"], "num_timesteps must be an integer >= 1"),
        (["data=mnist", "data.download=false", "paths.data_dir=nowhere"], "mnist: files missing in"),
        (["data=image_folder"], "data.root"),
    ],
)
def test_bad_input_is_one_clear_message(tmp_path, args, message):
    proc = run_cli([*FAST, "logger=none", *args], tmp_path)
    assert proc.returncode != 0
    assert message in proc.stderr or __import__("re").search(message, proc.stderr), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not list(tmp_path.rglob("*.ckpt"))  # nothing trained


def test_unknown_option_lists_the_choices(tmp_path):
    proc = run_cli(["scheduler=exponential"], tmp_path)
    assert proc.returncode != 0
    for option in ("linear", "cosine", "quadratic", "sigmoid"):
        assert option in proc.stderr


def test_wandb_without_credentials_logs_offline_and_holds_the_run(tmp_path):
    """No WANDB_API_KEY, no ~/.netrc, no WANDB_MODE: the run goes offline, says so once, never prompts;
    the offline run, read back with `wandb leet inspect`, holds the losses, FID, bpd and the figures."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(HOME=str(tmp_path / "home"), WANDB_SILENT="true")
    args = [*FAST, "logger=wandb", "trainer.max_steps=4", "trainer.val_check_interval=2", "trainer.log_every_n_steps=1",
            "callbacks.sample_eval.fid_samples=32", "callbacks.sample_eval.bpd_images=2",
            f"fid.cache_dir={tmp_path / 'cache'}", "fid.classifier.steps=20"]
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), f"paths.log_dir={tmp_path / 'logs'}", *args],
                          cwd=tmp_path, capture_output=True, text=True, env=env, timeout=600, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert log.count("logging offline") == 1 and "wandb sync" in log and "no W&B credentials" in log
    runs = list((run_dir(tmp_path) / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    inspect = subprocess.run(["wandb", "leet", "inspect", "--summary", "--json", str(runs[0])], capture_output=True,
                             text=True, env=env, timeout=120)
    summary = json.loads(inspect.stdout)
    assert summary["state"] == "finished"
    keys = set(summary["summary"])
    for key in ("train/loss", "train/loss_q0", "train/grad_norm", "val/loss", "val/fid_classifier",
                "val/fid_classifier_n", "val/bpd", "samples", "denoising_chain", "forward_process"):
        assert key in keys, key
    assert summary["config"]["model"]["_target_"] == "ddpm.unet.UNet"  # the resolved config
    images = {p.name.rsplit("_", 2)[0] for p in (runs[0] / "files" / "media" / "images").glob("*.png")}
    assert {"samples", "denoising_chain", "forward_process"} <= images


def test_train_in_process_returns_metrics(tmp_path):
    cfg = compose([*FAST, "logger=none", "trainer.max_steps=4", "trainer.val_check_interval=4"], output_dir=tmp_path)
    metrics = train(cfg)
    assert {"train/loss", "val/loss"} <= set(metrics) and all(v == v for v in metrics.values())


def test_in_process_bad_config_raises_config_error(tmp_path):
    cfg = compose([*FAST, "logger=none", "model.num_groups=5"], output_dir=tmp_path)
    with pytest.raises(ConfigError, match="GroupNorm groups"):
        train(cfg)


def test_eval_py_writes_samples_and_metrics(trained, tmp_path):
    import numpy as np

    _, out = trained
    proc = subprocess.run([sys.executable, str(ROOT / "eval.py"), f"ckpt_path={out / 'checkpoints' / 'last.ckpt'}",
                           "n_samples=20", "batch_size=8", "bpd_images=3", "metrics=[fid,bpd]", "logger=csv",
                           f"paths.log_dir={tmp_path / 'logs'}", f"fid.cache_dir={tmp_path / 'cache'}",
                           "fid.classifier.steps=20"], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "WANDB_MODE": "offline"}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    eval_dir = sorted((tmp_path / "logs" / "eval" / "runs").iterdir())[-1]
    metrics = json.loads((eval_dir / "metrics.json").read_text())
    assert metrics["global_step"] == 30 and metrics["use_ema"] is True
    assert metrics["fid_classifier_n"] == 20 and metrics["fid_classifier"] > 0
    assert metrics["bpd_n"] == 3 and metrics["bpd"] > 0 and metrics["bpd_clip_denoised"] is False
    samples = np.load(eval_dir / "samples.npz")["arr_0"]
    assert samples.shape == (20, 8, 8, 1) and samples.dtype == np.uint8
    assert (eval_dir / "samples.png").is_file()
    assert not list(eval_dir.glob("samples_rank*.npz"))


def test_eval_py_missing_checkpoint_is_one_message(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "eval.py"), f"ckpt_path={tmp_path / 'nope.ckpt'}", "logger=none",
                           f"paths.log_dir={tmp_path / 'logs'}"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 2 and "does not exist" in proc.stderr and "Traceback" not in proc.stderr


def test_ckpt_path_last_resumes_the_newest_run_and_its_wandb_run(tmp_path):
    env = {"WANDB_MODE": "offline"}
    args = [*FAST, "logger=wandb", "trainer.max_steps=3"]
    first = run_cli(args, tmp_path, env)
    assert first.returncode == 0, first.stderr[-3000:]
    first_dir = run_dir(tmp_path)
    run_id = torch.load(first_dir / "checkpoints" / "last.ckpt", weights_only=True)["wandb_run_id"]
    second = run_cli([*FAST, "logger=wandb", "trainer.max_steps=5", "ckpt_path=last"], tmp_path, env)
    assert second.returncode == 0, second.stderr[-3000:]
    second_dir = run_dir(tmp_path)
    assert second_dir != first_dir and f"Resuming from {first_dir}" in second.stdout + second.stderr
    ckpt = torch.load(second_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 5 and ckpt["wandb_run_id"] == run_id
    assert list((second_dir / "wandb").glob(f"offline-run-*-{run_id}"))


def test_ckpt_path_last_without_runs_is_one_message(tmp_path):
    proc = run_cli([*FAST, "logger=none", "ckpt_path=last"], tmp_path)
    assert proc.returncode == 2 and "no earlier last.ckpt" in proc.stderr
