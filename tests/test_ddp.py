"""DDP with 2 CPU processes (gloo), as `trainer=ddp` runs on GPUs: independent noise per rank, exact resume,
and FID over sharded samples equal to FID on one process. The GPU figures are in benchmarks/RESULTS.md."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT
from tests.helpers import QUIET_EVAL
from tests.helpers.processes import sigterm_once

pytestmark = pytest.mark.slow

ARGS = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true",
        "trainer.benchmark=false", "model=unet_tiny", "model.dropout=0.1", "scheduler.num_timesteps=50",
        "logger=csv", "trainer.max_steps=10", "trainer.val_check_interval=100", "data.batch_size=32",
        "callbacks.model_checkpoint.every_n_train_steps=5", *QUIET_EVAL, "data.num_workers=0"]


ENV = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}


def command(tmp_path: Path, *extra: str) -> list[str]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    return [sys.executable, str(ROOT / "train.py"), f"paths.log_dir={tmp_path / 'logs'}", *ARGS, *extra]


def train(tmp_path: Path, *extra: str) -> Path:
    proc = subprocess.run(command(tmp_path, *extra), cwd=tmp_path, capture_output=True, text=True, env=ENV,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return sorted((tmp_path / "logs" / "train" / "runs").iterdir())[-1] / "checkpoints"


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def test_ddp_ranks_draw_independent_noise_and_resume_exactly(tmp_path):
    full = train(tmp_path / "a")
    reference = load(full / "last.ckpt")
    assert reference["global_step"] == 10
    # seed_everything seeds both ranks alike; the module re-seeds each rank so t, eps and dropout differ.
    # Mid-run (step 5) both ranks have made the same calls, so equal states would mean equal draws.
    per_rank = load(full / "step_0000005.ckpt")["rng_states_per_rank"]
    assert len(per_rank) == 2
    assert not torch.equal(per_rank[0]["torch"], per_rank[1]["torch"])

    resumed = load(train(tmp_path / "b", f"ckpt_path={full / 'step_0000005.ckpt'}") / "last.ckpt")
    assert resumed["global_step"] == 10
    for name, value in reference["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][name]), f"{name} differs after resuming DDP from step 5"


def test_sigterm_of_a_two_process_run_stops_both_ranks_at_one_step_and_resumes_exactly(tmp_path):
    """SIGTERM to the launching process (rank 0: `kill`, or SLURM preempting the job): the ranks agree to stop at
    the same step, last.ckpt holds it, the exit code is 128 + 15; `ckpt_path=last` then ends with bitwise the
    weights of an uninterrupted 2-process run, as the loss curve of an uninterrupted run would continue."""
    steps = ["trainer.max_steps=60", "callbacks.model_checkpoint.every_n_train_steps=10"]
    reference = load(train(tmp_path / "a", *steps) / "last.ckpt")
    assert reference["global_step"] == 60

    sigterm_once(command(tmp_path / "b", *steps), tmp_path / "b", ENV, "step_0000010.ckpt")
    run = sorted((tmp_path / "b" / "logs" / "train" / "runs").iterdir())[-1]
    step = load(run / "checkpoints" / "last.ckpt")["global_step"]
    assert 10 <= step < 60 and json.loads((run / "metrics.json").read_text())["status"] == "interrupted"

    resumed = load(train(tmp_path / "b", *steps, "ckpt_path=last") / "last.ckpt")
    assert resumed["global_step"] == 60
    for name, value in reference["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][name]), f"{name} differs after resuming DDP from step {step}"


def test_ddp_loss_aware_history_holds_the_losses_of_both_ranks(tmp_path):
    """Every rank updates its history with all ranks' losses (all_gather): after 10 steps of 2 x 32 samples the
    checkpointed history counts 640 losses, not rank 0's 320."""
    ckpt = load(train(tmp_path, "objective.loss=vlb", "objective.timestep_sampler=loss_aware",
                      "objective.loss_aware.history_per_term=100") / "last.ckpt")
    assert int(ckpt["state_dict"]["timestep_sampler.loss_count"].sum()) == 10 * 2 * 32


def fid(devices: int, cache: Path) -> float:
    env = {**os.environ, "DDPM_CACHE_DIR": str(cache), "OMP_NUM_THREADS": "1"}
    quick_classifier = ["fid.classifier.steps=150", "fid.classifier.width=16"]
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "ddp_fid_check.py"), "--accelerator", "cpu",
                           "--devices", str(devices), "--n", "400", *quick_classifier], capture_output=True, text=True,
                          env=env, timeout=600, cwd=cache)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [x for x in proc.stdout.splitlines() if x.startswith("{")][-1]
    result = json.loads(line)
    assert result["devices"] == devices and result["fd_resnet_n"] == 400
    return result["fd_resnet"]


def test_fid_over_two_ranks_equals_fid_on_one(tmp_path):
    one, two = fid(1, tmp_path), fid(2, tmp_path)
    assert one > 0.1  # noisy images: a distance well away from 0
    assert two == pytest.approx(one, rel=1e-6)  # only the float64 summation order differs
