"""End to end: `python train.py` through Hydra on digits, resume from last.ckpt, sample; and every bad
input ends with one clear message before training starts."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf.errors import OmegaConfBaseException

from ddpm.core.samplers import DDIMSampler
from ddpm.errors import ConfigError, UserError
from ddpm.pipeline import SamplingPipeline
from ddpm.tasks.train import train
from ddpm.training.module import DiffusionModule
from tests.conftest import ROOT, compose
from tests.helpers.entry import run_entry

pytestmark = pytest.mark.slow

FAST = ["model=unet_tiny", "scheduler.num_timesteps=50", "callbacks.sample_eval.n_grid=16",
        "callbacks.sample_eval.nrow=4", "callbacks.sample_eval.fid_samples=0", "callbacks.sample_eval.bpd_images=0",
        "callbacks.progress_bar.refresh_rate=0",
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
    assert (out / "samples" / "step_0000020_chain.png").is_file()
    assert (out / "samples" / "forward_process.png").is_file()
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
    assert hp["model"]["_target_"] == "ddpm.nn.unet.UNet" and hp["image_shape"] == [1, 8, 8]
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
    a = module.pipeline().sample(4, seed=1).images
    b = module.pipeline().sample(4, seed=1).images
    assert a.shape == (4, 1, 8, 8) and torch.equal(a, b)
    assert a.min() >= -1.5 and torch.isfinite(a).all()


def test_checkpoint_from_before_learned_variance_and_guidance_samples_unchanged(trained, tmp_path):
    """A checkpoint saved before prediction / the objective's settings / model.num_classes existed (its
    hyperparameters lack them) loads with DDPM's defaults and samples exactly what today's checkpoint samples."""
    _, out = trained
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert {"prediction", "objective"} <= set(ckpt["hyper_parameters"])
    assert "num_classes" in ckpt["hyper_parameters"]["model"]
    old = dict(ckpt, hyper_parameters={k: v for k, v in ckpt["hyper_parameters"].items()
                                       if k not in ("prediction", "objective")})
    old["hyper_parameters"]["model"] = {k: v for k, v in old["hyper_parameters"]["model"].items() if k != "num_classes"}
    torch.save(old, tmp_path / "old.ckpt")
    now, before = (DiffusionModule.load_from_checkpoint(p, map_location="cpu", weights_only=True)
                   for p in (out / "checkpoints" / "last.ckpt", tmp_path / "old.ckpt"))
    assert before.num_classes is None and before.diffusion.prediction == "eps"
    assert before.diffusion.variance_type == now.diffusion.variance_type == "fixedlarge"
    now.sampler.progress = before.sampler.progress = False
    assert torch.equal(now.pipeline().sample(4, seed=3).images, before.pipeline().sample(4, seed=3).images)
    pipeline = SamplingPipeline.from_checkpoint(tmp_path / "old.ckpt")  # no Lightning: the same samples
    pipeline.sampler.progress = False
    assert torch.equal(pipeline.sample(4, seed=3).images, now.pipeline().sample(4, seed=3).images)


def test_pipeline_from_checkpoint_samples_what_the_module_samples(trained):
    """One sampling path: the checkpoint's pipeline (EMA weights, no Trainer) and the module draw the same images
    bit for bit, with the module's sampler or another; a step callback sees every step, t descending, and the
    last state is the sample."""
    _, out = trained
    path = out / "checkpoints" / "last.ckpt"
    module = DiffusionModule.load_from_checkpoint(path, map_location="cpu", weights_only=True)
    pipeline = SamplingPipeline.from_checkpoint(path)
    module.sampler.progress = pipeline.sampler.progress = False
    assert pipeline.sampler.describe() == module.sampler.describe()
    assert torch.equal(pipeline.sample(4, seed=5).images, module.pipeline().sample(4, seed=5).images)
    ddim = DDIMSampler(pipeline.diffusion, num_steps=5, progress=False)
    steps = []
    drawn = pipeline.with_sampler(ddim).sample(3, seed=2, callback=steps.append)
    assert torch.equal(drawn.images, module.pipeline().with_sampler(ddim).sample(3, seed=2).images)
    assert [s["i"] for s in steps] == list(range(5)) and [s["t"] for s in steps] == ddim.timesteps
    assert torch.equal(steps[-1]["x"], drawn.images) and steps[0]["denoised"].shape == drawn.images.shape
    trained_net = SamplingPipeline.from_checkpoint(path, use_ema=False)
    trained_net.sampler.progress = False
    assert torch.equal(trained_net.sample(2, seed=1).images, module.pipeline(use_ema=False).sample(2, seed=1).images)


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
    proc = run_entry("train", [*[a for a in FAST if not a.startswith("model=")], "model=unet_small", "logger=none",
                               f"ckpt_path={out / 'checkpoints' / 'last.ckpt'}"], tmp_path)
    assert proc.returncode == 2
    assert "different model config" in proc.stderr and "model.base_channels: checkpoint 16, this run 32" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_an_unknown_config_option_is_hydras_one_message(tmp_path):
    """Through the CLI as a user sees it: Hydra's own error."""
    proc = run_cli([*FAST, "logger=none", "model=unet_huge"], tmp_path)
    assert proc.returncode != 0 and "Could not find 'model/unet_huge'" in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["data.image_size=9"], "image_size 9 cannot be halved 1 times evenly"),
        (["data=mnist", "data.download=false", "paths.data_dir=nowhere"], "mnist: files missing in"),
    ],
)
def test_bad_input_is_one_clear_message(tmp_path, args, message):
    """A config check and missing data: one line, exit 2, nothing trained."""
    proc = run_entry("train", [*FAST, "logger=none", *args], tmp_path)
    assert proc.returncode == 2 and message in _one_error_line(proc)
    assert not list(tmp_path.rglob("*.ckpt"))  # nothing trained


@pytest.mark.parametrize(
    "args, message",
    [
        (["model.attention_resolutions=[16]"], r"attention resolution\(s\) \[16\] never occur"),
        (["scheduler.num_timesteps=0"], "num_timesteps must be an integer >= 1"),
        (["data=image_folder"], "data.root"),
        (["data.batch_size=0"], "data.batch_size must be a positive integer, got 0"),
        (["data.batch_size=-1"], "data.batch_size must be a positive integer, got -1"),
        (["trainer.max_steps=-5"], r"trainer.max_steps must be an integer >= -1 \(-1: no limit\), got -5"),
        (["optimizer.lr=nan"], "optimizer.lr must be a finite positive number, got nan"),
        (["optimizer.lr=-1"], "optimizer.lr must be a finite positive number, got -1"),
        (["callbacks.sample_eval.fid_samples=-3"], "callbacks.sample_eval.fid_samples must be an integer >= 0"),
        (["objective.loss=kl"], "objective.loss must be one of"),
        (["objective.timestep_sampler=importance"], "objective.timestep_sampler must be one of"),
    ],
)
def test_bad_config_value_is_refused_before_training(tmp_path, args, message):
    """In-process (the CLI turns exactly these exceptions into `error: <message>`, exit 2, as tested above)."""
    with pytest.raises((UserError, OmegaConfBaseException), match=message):
        train(compose([*FAST, "logger=none", *args], output_dir=tmp_path))
    assert not list(tmp_path.rglob("*.ckpt"))  # nothing trained


def _one_error_line(proc) -> str:
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, proc.stderr[-2000:]
    return lines[0]


def test_unreadable_image_file_stops_before_training_naming_it(tmp_path):
    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    for i in range(8):
        Image.new("RGB", (8, 8), (30 * i, 0, 0)).save(images / f"{i}.png")
    Image.new("RGB", (32, 32)).save(images / "cut.jpg")
    (images / "cut.jpg").write_bytes((images / "cut.jpg").read_bytes()[:200])
    args = [*FAST, "logger=none", "data=image_folder", f"data.root={images}", "data.image_size=8", "data.batch_size=4",
            "data.num_workers=0", "data.val_fraction=0.25"]
    line = _one_error_line(run_entry("train", args, tmp_path))
    assert "1 unreadable image(s)" in line and "cut.jpg" in line and "skip_unreadable=true" in line
    assert not list(tmp_path.rglob("*.ckpt"))
    skipped = run_entry("train", [*args, "data.skip_unreadable=true", "trainer.max_steps=2"], tmp_path)
    assert skipped.returncode == 0 and "skipping 1 unreadable image(s) of 9" in skipped.stdout + skipped.stderr


def test_unwritable_output_dir_is_one_line(tmp_path):
    """/proc takes no new folders, even for root (a read-only file system says the same in its own words)."""
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "paths.log_dir=/proc/ddpm-test", *FAST,
                           "logger=none"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2
    assert "cannot write the output dir /proc/ddpm-test/train/runs/" in _one_error_line(proc)


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
    for key in ("train/loss", "train/loss_q0", "train/grad_norm", "val/loss", "val/fd_resnet",
                "val/fd_resnet_n", "val/fd_resnet_nfe", "val/bpd", "samples", "denoising_chain",
                "forward_process"):
        assert key in keys, key
    assert summary["config"]["model"]["_target_"] == "ddpm.nn.unet.UNet"  # the resolved config
    images = {p.name.rsplit("_", 2)[0] for p in (runs[0] / "files" / "media" / "images").glob("*.png")}
    assert {"samples", "denoising_chain", "forward_process"} <= images


def test_an_empty_and_a_warm_feature_cache_train_the_same_weights(tmp_path):
    """The first run trains the FID feature classifier (an empty cache/), the second reads it: the classifier's
    training must not move the streams that draw t, eps and dropout, so both end with bitwise the same weights."""
    args = [*FAST, "logger=none", "model.dropout=0.1", "trainer.max_steps=6", "trainer.val_check_interval=3",
            "callbacks.sample_eval.fid_samples=16", "callbacks.sample_eval.chain_frames=0", "fid.classifier.steps=5",
            f"fid.cache_dir={tmp_path / 'cache'}"]
    weights = []
    for name in ("empty", "warm"):
        train(compose(args, output_dir=tmp_path / name))
        weights.append(torch.load(tmp_path / name / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"])
        assert (tmp_path / "cache" / "classifiers").is_dir()
    for key, value in weights[0].items():
        assert torch.equal(value, weights[1][key]), key


def test_a_requeued_slurm_job_resumes_from_its_own_last_ckpt(tmp_path, monkeypatch, caplog):
    """submitit requeues a preempted job with the same config and output dir; SLURM counts the restart."""
    from omegaconf import OmegaConf

    args = [*FAST, "logger=none", "trainer.val_check_interval=100"]
    train(compose([*args, "trainer.max_steps=3"], output_dir=tmp_path))
    with caplog.at_level("INFO", logger="ddpm.tasks.train"):
        train(compose([*args, "trainer.max_steps=5"], output_dir=tmp_path))  # no restart counted: starts over
        assert "Resuming from" not in caplog.text
        monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
        train(compose([*args, "trainer.max_steps=20"], output_dir=tmp_path))
        assert f"Resuming from {tmp_path / 'checkpoints' / 'last.ckpt'}" in caplog.text
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 20 and ckpt["lr_schedulers"][0]["last_epoch"] == 20
    assert OmegaConf.load(ROOT / "conf" / "launcher" / "slurm.yaml").hydra.launcher.max_num_timeout > 0


def test_train_in_process_returns_metrics(tmp_path):
    cfg = compose([*FAST, "logger=none", "trainer.max_steps=4", "trainer.val_check_interval=4"], output_dir=tmp_path)
    metrics = train(cfg)
    assert {"train/loss", "val/loss"} <= set(metrics) and all(v == v for v in metrics.values())


def test_vlb_loss_with_loss_aware_timesteps_trains_and_checkpoints_its_history(tmp_path):
    """L_vlb alone with importance-sampled t: the history fills (2 losses for each of 50 t), is saved in the
    checkpoint (restored with the weights), and the run resumes from it."""
    args = [*FAST, "logger=none", "module.variance_type=learned_range", "objective.loss=vlb",
            "objective.timestep_sampler=loss_aware", "objective.loss_aware.history_per_term=2",
            "trainer.val_check_interval=6", "callbacks.model_checkpoint.every_n_train_steps=6"]
    metrics = train(compose([*args, "trainer.max_steps=6"], output_dir=tmp_path / "a"))
    assert math.isfinite(metrics["train/loss"]) and math.isfinite(metrics["val/loss"])
    ckpt = torch.load(tmp_path / "a" / "checkpoints" / "last.ckpt", weights_only=True)
    state = ckpt["state_dict"]
    assert torch.equal(state["timestep_sampler.loss_count"], torch.full((50,), 2))
    assert state["timestep_sampler.loss_history"].gt(0).all()  # L_t > 0 at every t
    module = DiffusionModule.load_from_checkpoint(tmp_path / "a" / "checkpoints" / "last.ckpt", weights_only=True)
    assert module.hparams.objective["loss"] == "vlb" and module.timestep_sampler.probabilities().std() > 0
    train(compose([*args, "trainer.max_steps=8", f"ckpt_path={tmp_path / 'a' / 'checkpoints' / 'last.ckpt'}"],
                  output_dir=tmp_path / "b"))
    resumed = torch.load(tmp_path / "b" / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["global_step"] == 8


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
    assert metrics["fd_resnet_n"] == 20 and metrics["fd_resnet"] > 0
    assert metrics["bpd_n"] == 3 and metrics["bpd"] > 0 and metrics["bpd_clip_denoised"] is False
    samples = np.load(eval_dir / "samples.npz")["arr_0"]
    assert samples.shape == (20, 8, 8, 1) and samples.dtype == np.uint8
    assert (eval_dir / "samples.png").is_file()
    assert not list(eval_dir.glob("samples_rank*.npz"))


@pytest.mark.parametrize("arg, message", [("n_samples=0", "n_samples must be a positive integer, got 0"),
                                          ("batch_size=-2", "batch_size must be a positive integer, got -2")])
def test_eval_py_bad_numbers_are_one_message(trained, tmp_path, arg, message):
    _, out = trained
    proc = run_entry("eval", [f"ckpt_path={out / 'checkpoints' / 'last.ckpt'}", arg, "logger=none"], tmp_path)
    assert proc.returncode == 2 and message in _one_error_line(proc)


def test_eval_py_takes_any_sampler_from_the_command_line(trained, tmp_path):
    _, out = trained
    proc = run_entry("eval", [f"ckpt_path={out / 'checkpoints' / 'last.ckpt'}", "sampler=dpm_solver",
                              "sampler.num_steps=7", "n_samples=6", "metrics=[]", "logger=none"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    eval_dir = sorted((tmp_path / "logs" / "eval" / "runs").iterdir())[-1]
    metrics = json.loads((eval_dir / "metrics.json").read_text())
    assert metrics["sampler"] == "dpm_solver(DPM-Solver++(2M), S=7, logsnr)"
    assert metrics["nfe"] == 7 and metrics["n_samples"] == 6


def test_eval_py_missing_checkpoint_is_one_message(tmp_path):
    proc = run_entry("eval", [f"ckpt_path={tmp_path / 'nope.ckpt'}", "logger=none"], tmp_path)
    assert proc.returncode == 2 and "does not exist" in _one_error_line(proc)


def test_ckpt_path_last_resumes_the_newest_run_and_its_wandb_run(tmp_path):
    """Through the CLI: W&B holds one run per process, and the resumed process must continue the first's."""
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


def test_ckpt_path_last_takes_the_newest_run_of_this_model_or_says_why_none_fits(tmp_path):
    """A newer run of another model is passed over; with no run of this model, every run found is listed."""
    first = run_entry("train", [*FAST, "logger=none", "trainer.max_steps=3"], tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    tiny_dir = run_dir(tmp_path)
    other = run_entry("train", [*FAST, "logger=none", "trainer.max_steps=3", "model.base_channels=8"], tmp_path)
    assert other.returncode == 0, other.stderr[-3000:]
    resumed = run_entry("train", [*FAST, "logger=none", "trainer.max_steps=4", "ckpt_path=last"], tmp_path)
    assert resumed.returncode == 0 and f"Resuming from {tiny_dir}" in resumed.stdout + resumed.stderr
    none = run_entry("train", [*FAST, "logger=none", "model.base_channels=24", "ckpt_path=last"], tmp_path)
    line = _one_error_line(none)
    assert "none of the 3 earlier run(s)" in line and "model.base_channels: checkpoint 16, this run 24" in line


def test_ckpt_path_last_without_runs_is_one_message(tmp_path):
    proc = run_entry("train", [*FAST, "logger=none", "ckpt_path=last"], tmp_path)
    assert proc.returncode == 2 and "no earlier last.ckpt" in proc.stderr
