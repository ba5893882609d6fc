"""Exact resume: a run killed with SIGKILL and resumed from last.ckpt ends with bitwise the weights of an
uninterrupted run (same batches, same t and eps draws, same optimizer, LR schedule, EMA and step counter)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT
from tests.helpers import QUIET_EVAL
from tests.helpers.processes import sigterm_once

pytestmark = pytest.mark.slow

# digits with batch 64: 25 batches an epoch, so the run crosses epochs; validation at 15 and 30 draws
# from its own generators, and checkpoints every 5 steps.
ARGS = ["model=unet_tiny", "scheduler.num_timesteps=50", "logger=csv", "trainer.max_steps=40",
        "trainer.val_check_interval=15", "trainer.log_every_n_steps=1", "data.batch_size=64",
        "callbacks.model_checkpoint.every_n_train_steps=5", *QUIET_EVAL, "module.lr_warmup_steps=10",
        "model.dropout=0.1"]


def command(tmp_path: Path, *extra: str) -> list[str]:
    return [sys.executable, str(ROOT / "train.py"), f"paths.log_dir={tmp_path / 'logs'}", *ARGS, *extra]


def newest_run(tmp_path: Path) -> Path:
    return sorted((tmp_path / "logs" / "train" / "runs").iterdir())[-1]


def final_state(run: Path) -> dict:
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 40
    return ckpt


ENV = {**os.environ, "WANDB_MODE": "offline"}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The uninterrupted run of each data path, started in the background at first use and shared by the tests
    that compare a resumed run with it (it overlaps their own runs' start-up)."""
    started: dict[tuple, tuple[subprocess.Popen, Path]] = {}

    def start(*data: str) -> None:
        if data not in started:
            root = tmp_path_factory.mktemp("uninterrupted")
            started[data] = (subprocess.Popen(command(root, *data), cwd=root, stdout=subprocess.DEVNULL,
                                              stderr=subprocess.PIPE, text=True, env=ENV), root)

    def result(*data: str) -> dict:
        start(*data)
        proc, root = started[data]
        stderr = proc.communicate(timeout=600)[1]
        assert proc.returncode == 0, stderr[-3000:]
        return final_state(newest_run(root))

    return start, result


@pytest.mark.parametrize("data", [[], ["perf.data_on_device=true", "data.random_flip=true"]],
                         ids=["loader", "on_device"])
def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path, data, uninterrupted):
    """Both data paths: the DataLoader's, and the training split held on the device with its own seeded flips."""
    env = ENV
    start_reference, reference_of = uninterrupted
    start_reference(*data)
    killed = subprocess.Popen(command(tmp_path / "b", *data), cwd=tmp_path, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 300
    while time.time() < deadline:
        runs = list((tmp_path / "b" / "logs" / "train" / "runs").glob("*/checkpoints/step_0000025.ckpt"))
        if runs:
            break
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert runs, "the run never reached step 25"
    last = runs[0].parent / "last.ckpt"
    step_at_kill = torch.load(last, map_location="cpu", weights_only=True)["global_step"]
    assert 20 <= step_at_kill < 40

    resumed = subprocess.run(command(tmp_path / "c", *data, f"ckpt_path={last}"), cwd=tmp_path, capture_output=True,
                             text=True, env=env, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    result = final_state(newest_run(tmp_path / "c"))
    reference = reference_of(*data)

    for key in ("state_dict",):
        for name, value in reference[key].items():
            assert torch.equal(value, result[key][name]), f"{name} differs after resuming from step {step_at_kill}"
    ref_opt, res_opt = reference["optimizer_states"][0]["state"], result["optimizer_states"][0]["state"]
    for i in ref_opt:
        assert torch.equal(ref_opt[i]["exp_avg_sq"], res_opt[i]["exp_avg_sq"])
    assert reference["lr_schedulers"][0]["last_epoch"] == result["lr_schedulers"][0]["last_epoch"] == 40


def test_sigterm_saves_the_current_step_marks_the_run_interrupted_and_resumes_exactly(tmp_path, uninterrupted):
    """SLURM preemption or `kill`: the step in progress finishes, last.ckpt holds it (not the last periodic
    checkpoint), metrics.json says interrupted, the exit code is 128 + 15; `ckpt_path=last` then ends with
    bitwise the weights of an uninterrupted run."""
    import json

    env = ENV
    start_reference, reference_of = uninterrupted
    start_reference()

    (tmp_path / "b").mkdir(parents=True, exist_ok=True)
    sigterm_once(command(tmp_path / "b"), tmp_path / "b", env, "step_0000020.ckpt")
    run = newest_run(tmp_path / "b")
    record = json.loads((run / "metrics.json").read_text())
    step = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["global_step"]
    assert record["status"] == "interrupted" and record["step"] == step and 20 <= step < 40

    resumed = subprocess.run(command(tmp_path / "b", "ckpt_path=last"), cwd=tmp_path, capture_output=True, text=True,
                             env=env, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Resuming from {run}" in resumed.stdout + resumed.stderr
    result = final_state(newest_run(tmp_path / "b"))
    reference = reference_of()
    for name, value in reference["state_dict"].items():
        assert torch.equal(value, result["state_dict"][name]), f"{name} differs after resuming from step {step}"
