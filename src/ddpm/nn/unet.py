"""The DDPM U-Net (Ho et al. 2020, appendix B): a PixelCNN++-style U-Net with a sinusoidal time embedding.

Layout, for channel_mult of length L and image size S:
    conv_in -> [ResBlock x num_res_blocks (+ attention) -> Downsample] x L (no Downsample at the last level)
    -> middle: ResBlock, attention, ResBlock
    -> [ResBlock x (num_res_blocks + 1), each fed a skip (+ attention) -> Upsample] x L (no Upsample at the first)
    -> GroupNorm, SiLU, conv_out (zero-initialised, so the initial eps prediction is 0).
Resolutions visited: S, S/2, ..., S / 2^(L-1). With ch=128, channel_mult=(1, 2, 2, 2), num_res_blocks=2,
attention at 16 and 3 channels this is the 35.7M-parameter CIFAR-10 network.

Class-conditional (num_classes = K, for classifier-free guidance): a learned embedding of the label, K + 1
rows (row K is the null label, "no class"), added to the time embedding after its MLP, as improved-diffusion does.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0, flip_sin_to_cos: bool = False,
                       freq_shift: float = 1) -> Tensor:
    """The sinusoidal embedding (B, dim): [sin(t w_i), cos(t w_i)], w_i = max_period^(-i / (half - freq_shift)).
    DDPM's is freq_shift = 1 and sin first; diffusers' UNet2DModel defaults are freq_shift = 0 and cos first
    (flip_sin_to_cos): the same network family, another embedding its weights were trained with."""
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32)
    exponent = exponent / max(half - freq_shift, 1)
    args = t.float()[:, None] * exponent.exp()[None, :]  # (B, half)
    emb = torch.cat([args.cos(), args.sin()] if flip_sin_to_cos else [args.sin(), args.cos()], dim=1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


def zero_init(module: nn.Module) -> nn.Module:
    """Zero a layer's weights and bias: residual branches then start as the identity."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """GN -> SiLU -> conv, + projected time embedding, GN -> SiLU -> dropout -> conv(zero init), + skip. With
    scale_shift (improved-diffusion's use_scale_shift_norm, diffusers' "scale_shift") the embedding instead
    modulates the second norm: GN(h) (1 + scale) + shift."""

    compile_region = True  # a repeated block: perf.compile_scope=regional compiles it alone

    def __init__(self, in_ch: int, out_ch: int, temb_ch: int, dropout: float, groups: int, eps: float,
                 scale_shift: bool = False) -> None:
        super().__init__()
        self.scale_shift = scale_shift
        self.norm1 = nn.GroupNorm(groups, in_ch, eps=eps)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.temb_proj = nn.Linear(temb_ch, 2 * out_ch if scale_shift else out_ch)
        self.norm2 = nn.GroupNorm(groups, out_ch, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero_init(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Identity() if in_ch == out_ch else nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: Tensor, temb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        emb = self.temb_proj(F.silu(temb))[:, :, None, None]
        if self.scale_shift:
            scale, shift = emb.chunk(2, dim=1)
            h = self.norm2(h) * (1 + scale) + shift
        else:
            h = self.norm2(h + emb)
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Self-attention over the H*W positions through `scaled_dot_product_attention` (flash / mem-efficient)."""

    compile_region = True

    def __init__(self, ch: int, num_heads: int, groups: int, eps: float, norm: bool = True) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.norm = nn.GroupNorm(groups, ch, eps=eps) if norm else nn.Identity()
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj_out = zero_init(nn.Conv2d(ch, ch, 1))

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3 * self.num_heads, c // self.num_heads, h * w)
        # (B, 3*heads, HW, C/heads), made contiguous: the fused kernels need unit stride in the last dim, and
        # without it a compiled inference graph falls back to the math path (an fp32 matmul under autocast)
        q, k, v = qkv.transpose(-1, -2).contiguous().chunk(3, dim=1)  # each (B, heads, HW, C/heads)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, HW, C/heads)
        out = out.transpose(-1, -2).reshape(b, c, h, w)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    """Stride-2 3x3 convolution. padding 1: one zero row/column on every side (this framework's networks);
    padding 0: TensorFlow's "SAME" for stride 2, none before and one after (the DDPM paper's own network and
    diffusers' DDPM checkpoints, downsample_padding=0)."""

    def __init__(self, ch: int, padding: int = 1) -> None:
        super().__init__()
        if padding not in (0, 1):
            raise ValueError(f"model.downsample_padding must be 0 (TF SAME) or 1, got {padding}")
        self.pad = padding == 0
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=padding)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)) if self.pad else x)


class Upsample(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        """Nearest-neighbour 2x upsampling, written as a broadcast: the same values as F.interpolate, but its
        backward is a sum over each 2x2 block rather than interpolate's scatter-add (atomics on the GPU)."""
        b, c, h, w = x.shape
        up = x[:, :, :, None, :, None].expand(b, c, h, 2, w, 2).reshape(b, c, 2 * h, 2 * w)
        if x.is_contiguous(memory_format=torch.channels_last):  # eager channels_last runs stay NHWC
            up = up.contiguous(memory_format=torch.channels_last)
        return self.conv(up)


def check_unet_config(
    image_size: int,
    channel_mult: Sequence[int],
    attention_resolutions: Sequence[int],
    base_channels: int,
    num_heads: int,
    num_groups: int,
    attention_head_dim: int | None = None,
) -> list[int]:
    """Raise a ValueError that says what to change if the network can't be built; return the resolutions."""
    levels = len(channel_mult)
    if levels < 1:
        raise ValueError("channel_mult needs at least one level")
    factor = 2 ** (levels - 1)
    if image_size < factor or image_size % factor:
        raise ValueError(
            f"image_size {image_size} cannot be halved {levels - 1} times evenly (channel_mult has {levels} levels): "
            f"use an image size divisible by {factor} (set data.image_size), or a model with fewer levels"
        )
    resolutions = [image_size // 2**i for i in range(levels)]
    missing = sorted(set(attention_resolutions) - set(resolutions))
    if missing:
        raise ValueError(
            f"attention resolution(s) {missing} never occur: with image_size {image_size} and {levels} levels "
            f"the U-Net runs at {resolutions}; set model.attention_resolutions to a subset of these"
        )
    for ch in {base_channels * m for m in channel_mult}:
        if ch % num_groups:
            raise ValueError(f"{ch} channels can't be split into {num_groups} GroupNorm groups: "
                             "change model.num_groups")
        if attention_head_dim is None and ch % num_heads:
            raise ValueError(f"{ch} channels can't be split into {num_heads} attention heads: change model.num_heads")
        if attention_head_dim is not None and ch % attention_head_dim:
            raise ValueError(f"{ch} channels can't be split into heads of {attention_head_dim}: change "
                             "model.attention_head_dim")
    return resolutions


class UNet(nn.Module):
    """eps_theta(x_t, t): (B, in_channels, S, S), (B,) -> (B, out_channels, S, S)."""

    def __init__(
        self,
        image_size: int,
        in_channels: int = 3,
        out_channels: int | None = None,
        base_channels: int = 128,
        channel_mult: Sequence[int] = (1, 2, 2, 2),
        num_res_blocks: int = 2,
        attention_resolutions: Sequence[int] = (16,),
        dropout: float = 0.1,
        num_heads: int = 1,
        num_groups: int = 32,
        norm_eps: float = 1e-6,
        num_classes: int | None = None,
        downsample_padding: int = 1,
        attention_head_dim: int | None = None,
        flip_sin_to_cos: bool = False,
        freq_shift: float = 1,
        resnet_time_scale_shift: str = "default",
        mid_attention_norm: bool = True,
    ) -> None:
        """attention_head_dim: heads of this size at every attention level (diffusers' convention; None: num_heads
        heads everywhere); flip_sin_to_cos, freq_shift: the time embedding's convention (DDPM: False, 1);
        resnet_time_scale_shift: "default" adds the time embedding, "scale_shift" modulates the norm with it;
        mid_attention_norm: the middle attention normalises its input (diffusers' scale-shift networks do not)."""
        super().__init__()
        if resnet_time_scale_shift not in ("default", "scale_shift"):
            raise ValueError(f"model.resnet_time_scale_shift must be 'default' or 'scale_shift', got "
                             f"{resnet_time_scale_shift!r}")
        if num_classes is not None and (isinstance(num_classes, bool) or int(num_classes) < 1):
            raise ValueError(f"model.num_classes must be a positive integer or null, got {num_classes!r}")
        channel_mult, attention_resolutions = list(channel_mult), list(attention_resolutions)
        resolutions = check_unet_config(image_size, channel_mult, attention_resolutions, base_channels, num_heads,
                                        num_groups, attention_head_dim)
        self.flip_sin_to_cos, self.freq_shift = bool(flip_sin_to_cos), freq_shift
        self.image_size, self.in_channels = image_size, in_channels
        self.out_channels = out_channels or in_channels
        self.base_channels = base_channels
        temb_ch = 4 * base_channels
        scale_shift = resnet_time_scale_shift == "scale_shift"
        block = lambda i, o: ResBlock(i, o, temb_ch, dropout, num_groups, norm_eps, scale_shift)  # noqa: E731
        heads = lambda c: num_heads if attention_head_dim is None else c // attention_head_dim  # noqa: E731
        attn = lambda c: AttentionBlock(c, heads(c), num_groups, norm_eps)  # noqa: E731

        self.temb = nn.Sequential(nn.Linear(base_channels, temb_ch), nn.SiLU(), nn.Linear(temb_ch, temb_ch))
        self.num_classes = int(num_classes) if num_classes is not None else None
        if self.num_classes is not None:
            self.class_emb = nn.Embedding(self.num_classes + 1, temb_ch)  # row num_classes: the null label
        self.conv_in = nn.Conv2d(in_channels, base_channels, 3, padding=1)

        self.down = nn.ModuleList()
        skip_channels, ch = [base_channels], base_channels
        for level, (mult, res) in enumerate(zip(channel_mult, resolutions)):
            for _ in range(num_res_blocks):
                self.down.append(nn.ModuleList([block(ch, base_channels * mult)]))
                ch = base_channels * mult
                if res in attention_resolutions:
                    self.down[-1].append(attn(ch))
                skip_channels.append(ch)
            if level != len(channel_mult) - 1:
                self.down.append(nn.ModuleList([Downsample(ch, downsample_padding)]))
                skip_channels.append(ch)

        mid_attn = AttentionBlock(ch, heads(ch), num_groups, norm_eps, norm=mid_attention_norm)
        self.mid = nn.ModuleList([block(ch, ch), mid_attn, block(ch, ch)])

        self.up = nn.ModuleList()
        for level in reversed(range(len(channel_mult))):
            mult, res = channel_mult[level], resolutions[level]
            for _ in range(num_res_blocks + 1):
                self.up.append(nn.ModuleList([block(ch + skip_channels.pop(), base_channels * mult)]))
                ch = base_channels * mult
                if res in attention_resolutions:
                    self.up[-1].append(attn(ch))
            if level != 0:
                self.up.append(nn.ModuleList([Upsample(ch)]))

        self.norm_out = nn.GroupNorm(num_groups, ch, eps=norm_eps)
        self.conv_out = zero_init(nn.Conv2d(ch, self.out_channels, 3, padding=1))

    @staticmethod
    def _run(layers: nn.ModuleList, h: Tensor, temb: Tensor) -> Tensor:
        for layer in layers:
            h = layer(h, temb) if isinstance(layer, ResBlock) else layer(h)
        return h

    @property
    def null_label(self) -> int | None:
        """The label index that means "no class" (classifier-free guidance's unconditional model)."""
        return self.num_classes

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        """y: (B,) long class labels in [0, num_classes], num_classes meaning none; None = all null."""
        expected = (self.in_channels, self.image_size, self.image_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"UNet expects (B, {self.in_channels}, {self.image_size}, {self.image_size}), got {tuple(x.shape)}"
            )
        emb = timestep_embedding(t, self.base_channels, flip_sin_to_cos=self.flip_sin_to_cos,
                                 freq_shift=self.freq_shift)
        temb = self.temb(emb.to(x.dtype))
        if self.num_classes is not None:
            if y is None:
                y = torch.full((x.shape[0],), self.num_classes, device=x.device, dtype=torch.long)
            temb = temb + self.class_emb(y).to(temb.dtype)
        elif y is not None:
            raise ValueError("class labels given to an unconditional U-Net: set model.num_classes to train a "
                             "class-conditional model")
        h = self.conv_in(x)
        skips = [h]
        for layers in self.down:
            h = self._run(layers, h, temb)
            skips.append(h)
        h = self._run(self.mid, h, temb)
        for layers in self.up:
            if isinstance(layers[0], ResBlock):
                h = torch.cat([h, skips.pop()], dim=1)
            h = self._run(layers, h, temb)
        return self.conv_out(F.silu(self.norm_out(h)))
