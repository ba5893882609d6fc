"""diffusers interop: a diffusers DDPM (UNet2DModel + DDPMScheduler) as a checkpoint of ours, and ours as one of
theirs. Needs `pip install -e ".[diffusers]"`.

The DDPM U-Net is the same network on both sides (time embedding, ResBlocks, single-head attention, skip order),
so conversion is a renaming of tensors plus one reshape: our attention's qkv is a 1x1 convolution (3C, C, 1, 1),
diffusers' to_q / to_k / to_v are Linear (C, C) each. One difference is a setting, not a tensor: the DDPM paper's
TensorFlow downsampling pads "SAME" (0 before, 1 after) -- diffusers' downsample_padding=0 and our
`downsample_padding: 0`; our own networks pad 1 on both sides (downsample_padding=1 on both sides).

The conventions diffusers' UNet2DModel adds are settings of our U-Net too: the time embedding's flip_sin_to_cos
and freq_shift, heads of attention_head_dim channels, norm_eps, downsample padding, resnet_time_scale_shift
(default | scale_shift), any number of levels. What cannot be mapped is refused with one line that names the field:
block types other than (Attn)DownBlock2D / (Attn)UpBlock2D, another time embedding type or activation,
schedules and variances our diffusion does not have. A class-conditional model exports with num_class_embeds =
K + 1 (the last: the null label); its UNet takes class_labels, which diffusers' DDPMPipeline does not pass.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ddpm.core.parametrization import EpsPrediction, FixedLarge
from ddpm.errors import ConfigError
from ddpm.io.diffusers_scheduler import SAMPLER, scheduler_from_diffusers


def _diffusers():
    try:
        import diffusers
    except ImportError as err:
        raise ConfigError("reading or writing a diffusers model needs diffusers: pip install -e \".[diffusers]\"") \
            from err
    return diffusers


def is_diffusers_folder(path: Path) -> bool:
    return path.is_dir() and ((path / "unet" / "config.json").is_file() or (path / "config.json").is_file())


# ----- configs -----------------------------------------------------------------------------------
def unet_config_from_diffusers(cfg: dict[str, Any], where: str) -> dict[str, Any]:
    """Our UNet config for a UNet2DModel config, or a ConfigError naming the field that has no counterpart."""
    def refuse(field: str, value: Any, why: str) -> ConfigError:
        return ConfigError(f"{where}: UNet2DModel {field}={value!r} cannot be mapped onto this framework's U-Net "
                           f"({why})")

    expected = {"time_embedding_type": "positional", "center_input_sample": False, "act_fn": "silu",
                "mid_block_scale_factor": 1, "add_attention": True, "downsample_type": "conv",
                "upsample_type": "conv", "mid_block_type": "UNetMidBlock2D", "class_embed_type": None,
                "time_embedding_dim": None}
    for field, want in expected.items():
        if field in cfg and cfg[field] != want:
            raise refuse(field, cfg[field], f"DDPM's is {want!r}")
    if cfg.get("attn_norm_num_groups") not in (None, cfg.get("norm_num_groups", 32)):
        raise refuse("attn_norm_num_groups", cfg["attn_norm_num_groups"], "attention norms use norm_num_groups here")
    channels = list(cfg["block_out_channels"])
    if any(c % channels[0] for c in channels):
        raise refuse("block_out_channels", channels, "every level must be a multiple of the first")
    downs, ups = list(cfg["down_block_types"]), list(cfg["up_block_types"])
    for field, types, plain, attn in (("down_block_types", downs, "DownBlock2D", "AttnDownBlock2D"),
                                      ("up_block_types", ups, "UpBlock2D", "AttnUpBlock2D")):
        bad = [t for t in types if t not in (plain, attn)]
        if bad:
            raise refuse(field, bad[0], f"only {plain} and {attn}")
    attn_down = [i for i, t in enumerate(downs) if t.startswith("Attn")]
    if attn_down != [len(ups) - 1 - i for i, t in enumerate(ups) if t.startswith("Attn")][::-1]:
        raise refuse("up_block_types", ups, "attention must sit at the same levels going down and up")
    size = cfg["sample_size"]
    size = size[0] if isinstance(size, (list, tuple)) else size
    head_dim = cfg.get("attention_head_dim")
    levels = attn_down + [len(channels) - 1]  # and the middle block
    if head_dim is not None and any(channels[i] % head_dim for i in levels):
        raise refuse("attention_head_dim", head_dim, "it must divide the channels of every attention level")
    if cfg.get("resnet_time_scale_shift", "default") not in ("default", "scale_shift"):
        raise refuse("resnet_time_scale_shift", cfg["resnet_time_scale_shift"], "default and scale_shift are")
    num_classes = cfg.get("num_class_embeds")
    return {"_target_": "ddpm.nn.unet.UNet", "image_size": int(size), "in_channels": int(cfg["in_channels"]),
            "out_channels": int(cfg["out_channels"]), "base_channels": channels[0],
            "channel_mult": [c // channels[0] for c in channels], "num_res_blocks": int(cfg["layers_per_block"]),
            "attention_resolutions": [int(size) // 2**i for i in attn_down], "dropout": float(cfg.get("dropout", 0.0)),
            "num_heads": 1, "attention_head_dim": None if head_dim is None else int(head_dim),
            "num_groups": int(cfg.get("norm_num_groups", 32)), "norm_eps": float(cfg.get("norm_eps", 1e-5)),
            "num_classes": None if num_classes is None else num_classes - 1,
            "downsample_padding": int(cfg.get("downsample_padding", 1)),
            # diffusers' defaults where a config predates the key (True, 0), not DDPM's (False, 1)
            "flip_sin_to_cos": bool(cfg.get("flip_sin_to_cos", True)), "freq_shift": cfg.get("freq_shift", 0),
            "resnet_time_scale_shift": cfg.get("resnet_time_scale_shift", "default"),
            # diffusers' middle attention has no norm with scale-shift ResBlocks unless attn_norm_num_groups says
            "mid_attention_norm": (cfg.get("resnet_time_scale_shift", "default") == "default"
                                   or cfg.get("attn_norm_num_groups") is not None)}


def unet_config_to_diffusers(model: dict[str, Any]) -> dict[str, Any]:
    """The UNet2DModel config of our network (the inverse of `unet_config_from_diffusers`)."""
    size, mult, base = int(model["image_size"]), list(model["channel_mult"]), int(model["base_channels"])
    attn = [i for i in range(len(mult)) if size // 2**i in set(model["attention_resolutions"])]
    heads, head_dim = int(model.get("num_heads", 1)), model.get("attention_head_dim")
    if head_dim is None and heads != 1 and len({base * mult[i] // heads for i in attn + [len(mult) - 1]}) != 1:
        raise ConfigError(f"model.num_heads={heads}: diffusers sets a head size, and {heads} heads give different "
                          "head sizes at this network's attention levels; only 1 head exports here")
    return {"sample_size": size, "in_channels": int(model["in_channels"]), "out_channels": int(model["out_channels"]),
            "block_out_channels": [base * m for m in mult], "layers_per_block": int(model["num_res_blocks"]),
            "down_block_types": ["AttnDownBlock2D" if i in attn else "DownBlock2D" for i in range(len(mult))],
            "up_block_types": ["AttnUpBlock2D" if i in attn else "UpBlock2D" for i in reversed(range(len(mult)))],
            "attention_head_dim": (int(head_dim) if head_dim is not None else
                                   None if heads == 1 else base * mult[attn[0] if attn else -1] // heads),
            "norm_num_groups": int(model["num_groups"]), "norm_eps": float(model["norm_eps"]),
            "dropout": float(model["dropout"]), "downsample_padding": int(model.get("downsample_padding", 1)),
            "flip_sin_to_cos": bool(model.get("flip_sin_to_cos", False)), "freq_shift": model.get("freq_shift", 1),
            "resnet_time_scale_shift": model.get("resnet_time_scale_shift", "default"),
            "attn_norm_num_groups": (int(model["num_groups"]) if model.get("mid_attention_norm", True)
                                     and model.get("resnet_time_scale_shift", "default") != "default" else None),
            "time_embedding_type": "positional", "act_fn": "silu",
            # K classes + our null label: diffusers' class embedding (called with class_labels; K = unconditional)
            "num_class_embeds": None if model.get("num_classes") is None else int(model["num_classes"]) + 1}


# ----- weights -----------------------------------------------------------------------------------
def name_pairs(model: dict[str, Any]) -> list[tuple[str, str]]:
    """(our module path, diffusers module path) for every module that holds weights, in order."""
    pairs = [("temb.0", "time_embedding.linear_1"), ("temb.2", "time_embedding.linear_2"), ("conv_in", "conv_in"),
             ("norm_out", "conv_norm_out"), ("conv_out", "conv_out")]
    if model.get("num_classes") is not None:
        pairs.append(("class_emb", "class_embedding"))
    size, levels, n = int(model["image_size"]), len(model["channel_mult"]), int(model["num_res_blocks"])
    attn = {size // 2**i for i in range(levels)} & set(model["attention_resolutions"])
    k = 0
    for level in range(levels):
        for i in range(n):
            pairs.append((f"down.{k}.0", f"down_blocks.{level}.resnets.{i}"))
            if size // 2**level in attn:
                pairs.append((f"down.{k}.1", f"down_blocks.{level}.attentions.{i}"))
            k += 1
        if level != levels - 1:
            pairs.append((f"down.{k}.0.conv", f"down_blocks.{level}.downsamplers.0.conv"))
            k += 1
    pairs += [("mid.0", "mid_block.resnets.0"), ("mid.1", "mid_block.attentions.0"), ("mid.2", "mid_block.resnets.1")]
    k = 0
    for j, level in enumerate(reversed(range(levels))):
        for i in range(n + 1):
            pairs.append((f"up.{k}.0", f"up_blocks.{j}.resnets.{i}"))
            if size // 2**level in attn:
                pairs.append((f"up.{k}.1", f"up_blocks.{j}.attentions.{i}"))
            k += 1
        if level != 0:
            pairs.append((f"up.{k}.0.conv", f"up_blocks.{j}.upsamplers.0.conv"))
            k += 1
    return pairs


RESBLOCK = [("norm1", "norm1"), ("conv1", "conv1"), ("temb_proj", "time_emb_proj"), ("norm2", "norm2"),
            ("conv2", "conv2"), ("skip", "conv_shortcut")]


def state_dict_from_diffusers(theirs: dict[str, Tensor], model: dict[str, Any]) -> dict[str, Tensor]:
    """Our network's state dict from a UNet2DModel's (tensors copied; qkv concatenated and made 1x1 convs)."""
    ours: dict[str, Tensor] = {}
    for mine, their in name_pairs(model):
        if f"{their}.to_q.weight" in theirs:  # attention
            for p in ("weight", "bias"):
                qkv = torch.cat([theirs[f"{their}.to_{x}.{p}"] for x in "qkv"])
                ours[f"{mine}.qkv.{p}"] = qkv[:, :, None, None] if p == "weight" else qkv
                out = theirs[f"{their}.to_out.0.{p}"]
                ours[f"{mine}.proj_out.{p}"] = out[:, :, None, None] if p == "weight" else out
                if f"{their}.group_norm.{p}" in theirs:  # none in a scale-shift middle block
                    ours[f"{mine}.norm.{p}"] = theirs[f"{their}.group_norm.{p}"]
        elif f"{their}.time_emb_proj.weight" in theirs:  # ResBlock
            for a, b in RESBLOCK:
                for p in ("weight", "bias"):
                    if f"{their}.{b}.{p}" in theirs:
                        ours[f"{mine}.{a}.{p}"] = theirs[f"{their}.{b}.{p}"]
        else:
            for p in ("weight", "bias"):
                if f"{their}.{p}" in theirs:
                    ours[f"{mine}.{p}"] = theirs[f"{their}.{p}"]
    return {k: v.clone() for k, v in ours.items()}


def state_dict_to_diffusers(ours: dict[str, Tensor], model: dict[str, Any]) -> dict[str, Tensor]:
    """A UNet2DModel's state dict from our network's (the inverse of `state_dict_from_diffusers`)."""
    theirs: dict[str, Tensor] = {}
    for mine, their in name_pairs(model):
        if f"{mine}.qkv.weight" in ours:
            for p in ("weight", "bias"):
                q, k, v = ours[f"{mine}.qkv.{p}"].chunk(3)
                for x, part in zip("qkv", (q, k, v)):
                    theirs[f"{their}.to_{x}.{p}"] = part[:, :, 0, 0] if p == "weight" else part
                out = ours[f"{mine}.proj_out.{p}"]
                theirs[f"{their}.to_out.0.{p}"] = out[:, :, 0, 0] if p == "weight" else out
                if f"{mine}.norm.{p}" in ours:
                    theirs[f"{their}.group_norm.{p}"] = ours[f"{mine}.norm.{p}"]
        elif f"{mine}.temb_proj.weight" in ours:
            for a, b in RESBLOCK:
                for p in ("weight", "bias"):
                    if f"{mine}.{a}.{p}" in ours:
                        theirs[f"{their}.{b}.{p}"] = ours[f"{mine}.{a}.{p}"]
        else:
            for p in ("weight", "bias"):
                if f"{mine}.{p}" in ours:
                    theirs[f"{their}.{p}"] = ours[f"{mine}.{p}"]
    return {k: v.contiguous().clone() for k, v in theirs.items()}


# ----- folders -----------------------------------------------------------------------------------
def read_diffusers_folder(path: Path, scheduler: dict[str, Any] | None = None) -> dict[str, Any]:
    """A diffusers DDPM folder (unet/ + scheduler/, or a bare UNet2DModel folder and `scheduler`: one of our
    scheduler configs) as a checkpoint of ours: hyper_parameters, the weights as both net and EMA, global_step 0."""
    diffusers = _diffusers()
    unet_dir = path / "unet" if (path / "unet" / "config.json").is_file() else path
    config = json.loads((unet_dir / "config.json").read_text())
    if config.get("_class_name", "UNet2DModel") != "UNet2DModel":
        raise ConfigError(f"{unet_dir}: a {config['_class_name']} folder; expected a UNet2DModel (a DDPM)")
    # keys an older config leaves out take diffusers' defaults (flip_sin_to_cos=True: not DDPM's), as loading would
    defaults = {k: p.default for k, p in inspect.signature(diffusers.UNet2DModel.__init__).parameters.items()
                if p.default is not inspect.Parameter.empty}
    model = unet_config_from_diffusers({**defaults, **config}, str(unet_dir))
    try:
        unet = diffusers.UNet2DModel.from_pretrained(unet_dir)
    except (OSError, ValueError, EnvironmentError) as err:
        raise ConfigError(f"{unet_dir} holds a UNet2DModel config but no readable weights "
                          f"(diffusion_pytorch_model.safetensors or .bin): {str(err).splitlines()[0]}") from err
    sched_file = path / "scheduler" / "scheduler_config.json"
    if sched_file.is_file():
        hp = scheduler_from_diffusers(json.loads(sched_file.read_text()), str(sched_file))
    elif scheduler is not None:
        hp = {"scheduler": scheduler, "variance_type": FixedLarge.name, "prediction": EpsPrediction.name,
              "sampler": {**SAMPLER, "clip_denoised": True}}
    else:
        raise ConfigError(f"{path} has no scheduler/scheduler_config.json: give the schedule it was trained with, "
                          "e.g. scheduler=linear (DDPM's)")
    net = state_dict_from_diffusers(unet.state_dict(), model)
    hyper = {**hp, "model": model, "image_shape": [model["in_channels"], model["image_size"], model["image_size"]]}
    state = {**{f"net.{k}": v for k, v in net.items()}, **{f"ema.module.{k}": v for k, v in net.items()}}
    return {"hyper_parameters": hyper, "state_dict": state, "global_step": 0}


def hub_folder(repo_id: str) -> Path:
    """A Hub model through huggingface_hub's own download and cache; offline, one clear message."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError as err:
        raise ConfigError("hf: ids need huggingface_hub: pip install -e \".[diffusers]\"") from err
    try:
        return Path(snapshot_download(repo_id))
    except Exception as err:  # offline, unknown id, no access: the same advice
        raise ConfigError(f"hf:{repo_id} could not be fetched from the Hugging Face Hub ({type(err).__name__}); "
                          f"offline, download it where there is a network (huggingface-cli download {repo_id} "
                          "--local-dir DIR) and pass ckpt_path=DIR") from err
