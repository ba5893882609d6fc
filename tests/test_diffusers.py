"""diffusers interop: UNet2DModel <-> our U-Net, DDPMScheduler <-> our schedule, export.py and import (folders).

Parity is checked against diffusers itself (a test dependency): randomly initialised UNet2DModels in the layouts of
google/ddpm-cifar10-32 and the 256x256 DDPM checkpoints (smaller widths, the same structure), and the samples of
diffusers' own schedulers on an exported folder.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from omegaconf import OmegaConf

from ddpm.core.samplers import AncestralSampler, DDIMSampler
from ddpm.errors import ConfigError
from ddpm.io.checkpoint import read_checkpoint
from ddpm.io.diffusers_io import state_dict_from_diffusers, state_dict_to_diffusers, unet_config_from_diffusers
from ddpm.nn.unet import UNet
from ddpm.pipeline import SamplingPipeline
from tests.conftest import compose

diffusers = pytest.importorskip("diffusers")

DDPM = dict(flip_sin_to_cos=False, freq_shift=1, attention_head_dim=None, norm_num_groups=32, norm_eps=1e-6,
            downsample_padding=0, in_channels=3, out_channels=3, layers_per_block=2)
LAYOUTS = {  # google/ddpm-cifar10-32 and ddpm-{celebahq,church,bedroom}-256, at 1/4 width and 64 px for the latter
    "cifar10-32": dict(sample_size=32, block_out_channels=(32, 64, 64, 64),
                       down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"), dropout=0.1),
    "256": dict(sample_size=64, block_out_channels=(32, 32, 64, 64, 128, 128),
                down_block_types=("DownBlock2D",) * 4 + ("AttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "AttnUpBlock2D") + ("UpBlock2D",) * 4),
}


LAYOUTS["cifar10-32, 8 heads"] = {**LAYOUTS["cifar10-32"], "attention_head_dim": 8}
# UNet2DModels as people build them, on diffusers' own defaults (flip_sin_to_cos=True, freq_shift=0,
# attention_head_dim=8, norm_eps=1e-5, downsample_padding=1): diffusers' train_unconditional.py layout (six levels,
# attention at one; 1/4 width, 32 px), the same with scale-shift ResBlocks, the class default layout (attention at
# three levels, heads of 8 channels: a different head count per level), and a class-conditional model
DEFAULTS = dict(in_channels=3, out_channels=3, layers_per_block=2)
TRAIN_UNCONDITIONAL = dict(sample_size=32, block_out_channels=(32, 32, 64, 64, 128, 128),
                           down_block_types=("DownBlock2D",) * 4 + ("AttnDownBlock2D", "DownBlock2D"),
                           up_block_types=("UpBlock2D", "AttnUpBlock2D") + ("UpBlock2D",) * 4)
DIFFUSERS_LAYOUTS = {
    "train_unconditional": TRAIN_UNCONDITIONAL,
    "train_unconditional, scale_shift": {**TRAIN_UNCONDITIONAL, "resnet_time_scale_shift": "scale_shift"},
    "UNet2DModel defaults": dict(sample_size=16, block_out_channels=(32, 64, 96, 128)),
    "class-conditional": {**TRAIN_UNCONDITIONAL, "num_class_embeds": 11},
}


def _theirs(layout: str):
    torch.manual_seed(0)
    kwargs = {**DDPM, **LAYOUTS[layout]} if layout in LAYOUTS else {**DEFAULTS, **DIFFUSERS_LAYOUTS[layout]}
    net = diffusers.UNet2DModel(**kwargs).eval()
    with torch.no_grad():
        for p in net.parameters():  # diffusers zero-inits nothing, but make every weight matter
            p.normal_(0, 0.05)
    return net


@pytest.mark.parametrize("layout", sorted(LAYOUTS) + sorted(DIFFUSERS_LAYOUTS))
def test_unet2dmodel_converts_to_the_same_function_and_back_bit_for_bit(layout):
    theirs = _theirs(layout)
    cfg = unet_config_from_diffusers(dict(theirs.config), layout)
    ours = UNet(**{k: v for k, v in cfg.items() if k != "_target_"}).eval()
    ours.load_state_dict(state_dict_from_diffusers(theirs.state_dict(), cfg), strict=True)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters())
    x = torch.randn(2, 3, cfg["image_size"], cfg["image_size"], generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0, 999])
    labels = {} if cfg["num_classes"] is None else {"class_labels": torch.tensor([3, cfg["num_classes"]])}
    with torch.no_grad():
        mine = ours(x, t, labels.get("class_labels"))
        torch.testing.assert_close(mine, theirs(x, t, **labels).sample, rtol=1e-5, atol=1e-6)
    back = state_dict_to_diffusers(ours.state_dict(), cfg)
    assert back.keys() == theirs.state_dict().keys()
    assert all(torch.equal(back[k], v) for k, v in theirs.state_dict().items())


def test_the_full_cifar10_configuration_has_the_papers_parameter_count():
    cfg = unet_config_from_diffusers({**DDPM, **LAYOUTS["cifar10-32"], "block_out_channels": (128, 256, 256, 256)},
                                     "cifar10")
    assert sum(p.numel() for p in UNet(**{k: v for k, v in cfg.items() if k != "_target_"}).parameters()) == 35_746_307


@pytest.mark.parametrize("field, value", [("down_block_types", ["CrossAttnDownBlock2D"] * 4),
                                          ("attention_head_dim", 3), ("resnet_time_scale_shift", "scale_shift_norm"),
                                          ("time_embedding_type", "fourier"), ("act_fn", "gelu")])
def test_a_unet_that_cannot_be_mapped_is_refused_naming_the_field(tmp_path, field, value):
    folder = _pipeline_folder(tmp_path)
    config = {**json.loads((folder / "unet" / "config.json").read_text()), field: value}
    (folder / "unet" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=field):
        read_checkpoint(folder)


def test_a_config_without_the_time_embedding_keys_takes_diffusers_defaults(tmp_path):
    """An older UNet2DModel config without flip_sin_to_cos / freq_shift was built with diffusers' defaults (True,
    0), not DDPM's."""
    folder = _pipeline_folder(tmp_path)
    config = json.loads((folder / "unet" / "config.json").read_text())
    for key in ("flip_sin_to_cos", "freq_shift"):
        config.pop(key, None)
    (folder / "unet" / "config.json").write_text(json.dumps(config))
    model = read_checkpoint(folder)["hyper_parameters"]["model"]
    assert model["flip_sin_to_cos"] is True and model["freq_shift"] == 0


@pytest.mark.parametrize("field, value", [("prediction_type", "flow"), ("variance_type", "learned"),
                                          ("thresholding", True), ("beta_schedule", "sigmoid")])
def test_a_scheduler_that_cannot_be_mapped_is_refused_naming_the_field(tmp_path, field, value):
    folder = _pipeline_folder(tmp_path)
    path = folder / "scheduler" / "scheduler_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), field: value}))
    with pytest.raises(ConfigError, match=field):
        read_checkpoint(folder)


def test_a_folder_without_weights_or_schedule_is_one_line(tmp_path):
    folder = _pipeline_folder(tmp_path)
    shutil.rmtree(folder / "scheduler")
    with pytest.raises(ConfigError, match="scheduler=linear"):
        read_checkpoint(folder)
    linear = {"_target_": "ddpm.core.schedules.linear_betas", "num_timesteps": 20}
    assert read_checkpoint(folder, linear)["hyper_parameters"]["scheduler"] == linear  # a bare UNet folder
    (folder / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(ConfigError, match="no readable weights"):
        read_checkpoint(folder, linear)


# ----- export, then diffusers' own pipeline ------------------------------------------------------
def _checkpoint(tmp_path, *overrides: str):
    from ddpm.tasks.train import build_module

    module = build_module(compose(["model=unet_tiny", "data=synthetic", "data.image_size=8", "data.channels=1",
                                   "scheduler.num_timesteps=20", "perf=cpu", *overrides]))
    torch.manual_seed(3)
    with torch.no_grad():
        for p in module.ema.module.parameters():
            p.normal_(0, 0.05)
    path = tmp_path / "run" / "checkpoints" / "last.ckpt"
    path.parent.mkdir(parents=True)
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams), "global_step": 7}, path)
    return path


def _export(ckpt, out, **extra):
    from ddpm.tasks.export import export

    return export(OmegaConf.create({"ckpt_path": str(ckpt), "format": "diffusers", "out": str(out), "use_ema": True,
                                    "overwrite": False, **extra}))


def _pipeline_folder(tmp_path):
    return _export(_checkpoint(tmp_path), tmp_path / "exported")


@pytest.mark.parametrize("variance", ["fixedlarge", "fixedsmall", "learned_range"])
def test_exported_folder_samples_in_diffusers_what_our_sampler_samples(tmp_path, variance):
    """DDPMPipeline.from_pretrained(DIR): its scheduler's ancestral steps and ours, from the same noise (float64),
    agree to float32 rounding of the betas (diffusers keeps them in float32)."""
    extra = ["objective.vlb_weight=0.001"] if variance == "learned_range" else []
    out = _export(_checkpoint(tmp_path, f"module.variance_type={variance}", *extra), tmp_path / "exported")
    pipe = diffusers.DDPMPipeline.from_pretrained(out)
    ours = SamplingPipeline.from_checkpoint(out)
    assert "last.ckpt" not in str(out) and (out / "README.md").read_text().count("step 7") == 1
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        unet, net = pipe.unet.double(), ours.net.double()
        scheduler = pipe.scheduler
        scheduler.set_timesteps(scheduler.config.num_train_timesteps)
        g = torch.Generator().manual_seed(0)
        image = torch.randn(4, 1, 8, 8, generator=g)
        with torch.no_grad():
            for t in scheduler.timesteps:
                image = scheduler.step(unet(image, t).sample, t, image, generator=g).prev_sample
            mine = AncestralSampler(ours.diffusion, progress=False).sample(
                net, (4, 1, 8, 8), generator=torch.Generator().manual_seed(0)).images
    finally:
        torch.set_default_dtype(default)
    torch.testing.assert_close(mine, image, rtol=1e-5, atol=1e-5)


def test_ddim_through_diffusers_on_the_exported_folder_matches_ours_on_the_same_timesteps(tmp_path):
    out = _pipeline_folder(tmp_path)
    scheduler = diffusers.DDIMScheduler.from_pretrained(out, subfolder="scheduler")
    scheduler.set_timesteps(5)
    ours = SamplingPipeline.from_checkpoint(out)
    unet = diffusers.UNet2DModel.from_pretrained(out, subfolder="unet").double()
    net = ours.net.double()
    sampler = DDIMSampler(ours.diffusion, num_steps=5, eta=0.0, progress=False)
    sampler.timesteps = scheduler.timesteps.tolist()
    x_T = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    image = x_T.clone()
    with torch.no_grad():
        for t in scheduler.timesteps:
            image = scheduler.step(unet(image, t).sample, t, image, eta=0.0, use_clipped_model_output=True).prev_sample
        mine = sampler.sample(net, x_T.shape, noise=x_T.clone()).images
    torch.testing.assert_close(mine, image, rtol=1e-5, atol=1e-5)


def test_export_then_import_gives_back_the_same_network_and_schedule(tmp_path):
    ckpt = _checkpoint(tmp_path)
    out = _export(ckpt, tmp_path / "exported")
    before, after = SamplingPipeline.from_checkpoint(ckpt), SamplingPipeline.from_checkpoint(out)
    assert all(torch.equal(a, b) for a, b in zip(before.net.state_dict().values(), after.net.state_dict().values()))
    torch.testing.assert_close(after.diffusion.betas, before.diffusion.betas, rtol=0, atol=0)
    before.sampler.progress = after.sampler.progress = False
    assert torch.equal(before.sample(2, seed=1).images, after.sample(2, seed=1).images)
    with pytest.raises(ConfigError, match="not empty"):
        _export(ckpt, out)


def test_a_class_conditional_model_exports_and_imports_back(tmp_path):
    """num_class_embeds = K + 1 (our null label last): diffusers' UNet with class_labels computes what ours does,
    and the import gives back the same weights and guided samples; the model card shows the sampling loop."""
    ckpt = _checkpoint(tmp_path, "model.num_classes=3", "objective.cond_drop_prob=0.1")
    out = _export(ckpt, tmp_path / "exported")
    theirs = diffusers.UNet2DModel.from_pretrained(out / "unet").eval()
    ours = SamplingPipeline.from_checkpoint(ckpt)
    assert theirs.config.num_class_embeds == 4
    x, t, y = torch.randn(4, 1, 8, 8), torch.tensor([0, 3, 5, 9]), torch.tensor([0, 1, 2, 3])
    with torch.no_grad():
        torch.testing.assert_close(theirs(x, t, class_labels=y).sample, ours.net(x, t, y), rtol=1e-5, atol=1e-6)
    back = SamplingPipeline.from_checkpoint(out)
    back.sampler.progress = ours.sampler.progress = False
    labels = torch.tensor([0, 2])
    assert torch.equal(back.sample(2, seed=1, labels=labels, guidance_scale=1.0).images,
                       ours.sample(2, seed=1, labels=labels, guidance_scale=1.0).images)
    assert "class_labels=labels" in (out / "README.md").read_text()


def test_init_from_a_diffusers_folder_trains_from_its_weights(tmp_path):
    from ddpm.tasks.train import init_source, load_init_weights

    out = _pipeline_folder(tmp_path)
    cfg = compose(["data=synthetic", "data.image_size=8", "data.channels=1", f"init_from={out}",
                   "scheduler.num_timesteps=20"])
    source = init_source(cfg)
    assert cfg.model.downsample_padding == 1 and cfg.model.base_channels == 16  # the source's network
    from ddpm.tasks.train import build_module

    module = build_module(cfg)
    load_init_weights(module, source)
    want = SamplingPipeline.from_checkpoint(out).net.state_dict()
    assert all(torch.equal(module.net.state_dict()[k], v) for k, v in want.items())
    with pytest.raises(ConfigError, match="data gives"):
        init_source(compose(["data=synthetic", "data.image_size=16", "data.channels=1", f"init_from={out}"]))
    from ddpm.tasks.train import check_checkpoint

    with pytest.raises(ConfigError, match="init_from="):
        check_checkpoint(str(out), module)


@pytest.mark.slow
def test_a_diffusers_default_pipeline_evaluates_and_exports_back_bit_for_bit(tmp_path):
    """As a user would: a DDPMPipeline folder of a UNet2DModel on diffusers' defaults (train_unconditional's layout,
    fixed_small variance), through eval.py with another sampler, then export.py of the import: the same weights."""
    from safetensors.torch import load_file

    from tests.helpers.entry import run_entry

    folder = tmp_path / "hub-model"
    diffusers.DDPMPipeline(unet=_theirs("train_unconditional"),
                           scheduler=diffusers.DDPMScheduler(variance_type="fixed_small")).save_pretrained(folder)
    done = run_entry("eval", [f"ckpt_path={folder}", "data=cifar10", "sampler=ddim", "sampler.num_steps=10",
                              "n_samples=8", "metrics=[]", "logger=none"], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    done = run_entry("export", [f"ckpt_path={folder}", "format=diffusers", f"out={tmp_path / 'again'}"], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    before = load_file(folder / "unet" / "diffusion_pytorch_model.safetensors")
    after = load_file(tmp_path / "again" / "unet" / "diffusion_pytorch_model.safetensors")
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    config = json.loads((tmp_path / "again" / "unet" / "config.json").read_text())
    assert config["flip_sin_to_cos"] is True and config["freq_shift"] == 0 and config["attention_head_dim"] == 8
