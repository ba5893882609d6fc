"""Runs are users' data: a checkpoint and the configs written before the package was grouped into layers (by commit
008d7a2, tests/fixtures/) keep loading, and sample bit for bit what they sampled then."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ddpm.core.samplers import DDIMSampler, DPMSolverSampler, EDMSampler
from ddpm.io.checkpoint import read_checkpoint
from ddpm.io.compat import TARGETS, instantiate, upgrade_run_config, upgrade_target
from ddpm.pipeline import SamplingPipeline
from ddpm.tasks.config import compose
from tests.conftest import CONF
from tests.helpers import FIXTURES, OLD_CKPT, OLD_RUN

RUN, CKPT = OLD_RUN, OLD_CKPT


def test_the_old_checkpoint_names_the_old_paths():
    """The fixture is what it claims to be: without the table, its targets would not import."""
    hp = read_checkpoint(CKPT)["hyper_parameters"]
    assert (hp["model"]["_target_"], hp["scheduler"]["_target_"], hp["sampler"]["_target_"]) == (
        "ddpm.unet.UNet", "ddpm.schedules.linear_betas", "ddpm.samplers.AncestralSampler")
    with pytest.raises(ModuleNotFoundError):
        __import__("ddpm.unet")


def test_the_objectives_old_module_keys_become_the_objective_group():
    from ddpm.io.compat import upgrade_hparams

    hp = read_checkpoint(CKPT)["hyper_parameters"]
    assert hp["loss"] == "simple" and "objective" not in hp  # written when they were module keys
    new = upgrade_hparams(hp)
    assert new["objective"] == {"loss": "simple", "vlb_weight": 0.001, "timestep_sampler": "uniform",
                                "loss_aware": {"history_per_term": 10, "uniform_prob": 0.001}, "cond_drop_prob": 0.0}
    assert not set(new) & {"loss", "vlb_weight", "timestep_sampler", "loss_aware", "cond_drop_prob"}


def test_every_old_target_resolves_to_an_object_of_the_same_name():
    for old, new in TARGETS.items():
        if old.endswith("."):
            __import__(new[:-1])
        else:
            module, _, name = new.rpartition(".")
            assert name == old.rpartition(".")[2] and hasattr(__import__(module, fromlist=[name]), name)
    assert upgrade_target("ddpm.schedules.cosine_betas") == "ddpm.core.schedules.cosine_betas"
    assert upgrade_target("torch.optim.Adam") == "torch.optim.Adam"


def test_instantiate_refuses_hydra_only_keys():
    with pytest.raises(ValueError, match="_partial_"):
        instantiate({"_target_": "ddpm.schedules.linear_betas", "_partial_": True, "num_timesteps": 10})


def test_the_old_checkpoint_samples_as_it_did_through_the_pipeline():
    """The same samples as the old code drew, to float rounding: a CPU with other vector units (AVX-512 against
    AVX2) rounds the 1000 steps of the ancestral chain differently, by about 1e-6; a change in what the checkpoint
    means (schedule, parametrization, variance) moves them by 1e-2 or more."""
    ref = torch.load(RUN / "samples.pt", weights_only=True)
    pipe = SamplingPipeline.from_checkpoint(CKPT)
    torch.testing.assert_close(pipe.sample(4, seed=0).images, ref["chain_ancestral"], rtol=0, atol=1e-5)
    for name, sampler in {"ddim": DDIMSampler(pipe.diffusion, num_steps=10),
                          "edm": EDMSampler(pipe.diffusion, num_steps=5, s_churn=10),
                          "dpm_sde": DPMSolverSampler(pipe.diffusion, num_steps=10, sde=True)}.items():
        torch.testing.assert_close(pipe.with_sampler(sampler).sample(4, seed=1).images, ref[name], rtol=0, atol=1e-5,
                                   msg=name)


@pytest.mark.slow
def test_the_old_checkpoint_evaluates_bit_identically_through_eval(tmp_path):
    """eval.py's task on the old run (its data config read from the old config.yaml): the same samples.npz."""
    from omegaconf import open_dict

    from ddpm.tasks.evaluate import evaluate

    cfg = compose("eval", [f"ckpt_path={CKPT}", "n_samples=8", "metrics=[]", "logger=none"], CONF)
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path)
    evaluate(cfg)
    ours = np.load(tmp_path / "samples.npz")["arr_0"]
    assert np.array_equal(ours, np.load(RUN / "eval_samples.npz")["arr_0"])


@pytest.mark.slow
def test_the_old_checkpoint_loads_into_the_lightning_module():
    from ddpm.training.module import DiffusionModule

    module = DiffusionModule.load_from_checkpoint(CKPT, map_location="cpu")
    ref = torch.load(RUN / "samples.pt", weights_only=True)
    assert module.objective.config.loss == "simple" and module.hparams.objective["vlb_weight"] == 0.001
    # to float rounding, as in test_the_old_checkpoint_samples_as_it_did_through_the_pipeline
    torch.testing.assert_close(module.pipeline().sample(4, seed=0).images, ref["chain_ancestral"], rtol=0, atol=1e-5)


def test_composed_configs_are_those_of_before_the_move_key_by_key():
    """Every config option and experiment composed today equals its composition by the old code once read through
    `upgrade_run_config` (old `_target_`s, the objective's old module keys; paths and Hydra's own node aside)."""
    from omegaconf import OmegaConf, open_dict

    old = json.loads((FIXTURES / "composed_v0.json").read_text())
    assert len(old) > 30
    for key, before in old.items():
        name, *overrides = key.split(" ")
        cfg = compose(name, overrides, CONF)
        with open_dict(cfg):
            cfg.paths.output_dir = "OUT"
        now = without_later_additions(OmegaConf.to_container(cfg, resolve=True))
        now.pop("hydra", None), now.pop("paths", None)
        assert now == upgrade_run_config(before), key


# keys added since that commit, each with the default that keeps the old behaviour (dropped before comparing)
ADDED_FID_KEYS = {"reference_size": None, "reference_stats": None}
ADDED_MODEL_KEYS = {"attention_head_dim": None, "flip_sin_to_cos": False, "freq_shift": 1,
                    "resnet_time_scale_shift": "default", "mid_attention_norm": True}
CHANGED = {"warmup_batches": (0, None)}  # eval.py: old default, new default (None: warm up a compiled network only)


def without_later_additions(cfg):
    """A composed config with the later keys removed (each checked to hold its neutral default) and the changed
    defaults put back."""
    if isinstance(cfg, dict):
        if "feature" in cfg and "reference_split" in cfg:  # a fid config
            for k, v in ADDED_FID_KEYS.items():
                assert cfg.pop(k) == v
        if "timestep_sampler" in cfg and "loss" in cfg:  # the objective group
            assert cfg.pop("weighting") is None and cfg.pop("log_normal") is None
        if str(cfg.get("_target_", "")).startswith("ddpm.data."):  # a data config
            assert cfg.pop("sigma_data") == "auto"
        if "throughput" in cfg and "progress_bar" in cfg:  # the callbacks
            assert cfg.pop("startup") == {"_target_": "ddpm.training.compute.StartupReport", "at_step": 20}
        if "compile_mode" in cfg:  # a perf group
            assert cfg.pop("compile_scope") == "model" and cfg.pop("compile_cache_dir").endswith("torch_compile")
        if "ema_decay" in cfg:  # the module settings
            assert cfg.pop("ema_profiles") == []
        if "ckpt_path" in cfg and "n_samples" in cfg:  # eval.py's config
            assert cfg.pop("ema") is None
        if cfg.get("_target_") == "ddpm.nn.unet.UNet":
            for k, v in ADDED_MODEL_KEYS.items():
                assert cfg.pop(k) == v
        for k, (old, new) in CHANGED.items():
            if k in cfg:
                assert cfg[k] == new
                cfg[k] = old
        return {k: without_later_additions(v) for k, v in cfg.items()}
    return cfg


def test_eval_warms_up_every_batch_shape_it_will_draw(tmp_path, monkeypatch):
    """A ragged last batch is another compiled graph: the warm-up draws one batch of each shape, so the timed
    sampling holds no compilation (benchmarks/RESULTS.md: 9.9 s of recompilation otherwise)."""
    from ddpm.pipeline import evaluation
    from tests.helpers.entry import run_entry

    seen, real = [], evaluation.evaluate_request
    monkeypatch.setattr(evaluation, "evaluate_request", lambda p, r, *a, **k: seen.append((r.n, r.batch_size))
                        or real(p, r, *a, **k))
    done = run_entry("eval", [f"ckpt_path={CKPT}", "n_samples=10", "batch_size=4", "warmup_batches=1",
                              "sampler=ddim", "sampler.num_steps=3", "metrics=[]", "logger=none"], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert seen == [(4, 4), (2, 2), (10, 4)]
