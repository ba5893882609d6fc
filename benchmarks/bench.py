"""GPU throughput of this project's DDPM vs HF diffusers and lucidrains' denoising-diffusion-pytorch.

One process, one GPU. For each implementation and mode: training img/s of the 35.7M-class CIFAR-10
U-Net at batch 128 (loss, backward, optimizer step and, for ours, the EMA update), steady-state memory, and
1000-step ancestral sampling img/s. Each figure is the median of `repeats` timed windows after a
warm-up (compilation included in the warm-up, never in the timing).

    python benchmarks/bench.py --quick --check bf16+compile+cg+cl --profile   # what RESULTS.md used
    python benchmarks/bench.py            # sampling timed over all 1000 steps, longer windows

Modes of ours: fp32 | bf16, +compile, +cg (CUDA graphs for training: module.compile_mode=reduce-overhead),
+ma (max-autotune-no-cudagraphs), +cl (channels_last: NHWC parameters, and NHWC activations inside the
graph); experiment: +gn2 (see mode_patches).
The default, bf16+compile+cg+cl, is what `python train.py trainer=gpu` runs. Time on an H100 (measured in
parts): ours about 3.5 minutes with --check, compilation included; a peer's compiled mode about as long again.

Ours runs through `DiffusionModule.training_step` (the real training path); `--fit` also runs
`python train.py model=unet_base data=synthetic trainer=gpu` for FIT_STEPS steps in a subprocess (FIT_OVERRIDES:
no FID, no validation, CSV logs) and prints its Throughput and host-phase lines and its ratio to the step's img/s.
Peers are imported only if installed (they are not dependencies of this project).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def timed(fn: Callable[[], None], warmup: int, steps: int, repeats: int) -> float:
    """Median seconds per call over `repeats` windows of `steps` calls, after `warmup` calls."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    windows = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            fn()
        torch.cuda.synchronize()
        windows.append((time.perf_counter() - start) / steps)
    return statistics.median(windows)


def peak_gib(fn: Callable[[], None]) -> tuple[float, float]:
    """Peak GiB allocated and reserved over one steady-state call, after dropping cached blocks.

    Reserved is the figure compared: with CUDA graphs the step's activations live in the graph's private
    pool, which stays reserved (not allocated) between replays."""
    torch.cuda.synchronize()
    torch.cuda.empty_cache()  # cached blocks (cuDNN autotuning workspaces, compile-time trials) are not needed
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2**30, torch.cuda.max_memory_reserved() / 2**30


# ----- ours ------------------------------------------------------------------------------------
def build_ours(mode: str, model: str = "unet_base"):
    """Our DiffusionModule (unet_base, linear T=1000) built from the Hydra configs, in a given mode.

    Mode tokens: fp32 | bf16, compile, cg (compile_mode=reduce-overhead: CUDA graphs for training too),
    ma (max-autotune-no-cudagraphs), cl (channels_last: NHWC activations)."""
    from hydra import compose, initialize_config_dir

    from ddpm.tasks.train import build_module

    tokens = mode.split("+")
    compile_mode = ("reduce-overhead" if "cg" in tokens else
                    "max-autotune-no-cudagraphs" if "ma" in tokens else "default")
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[
            f"model={model}", "data=synthetic", f"perf.compile={'compile' in tokens}",
            f"perf.compile_mode={compile_mode}", f"perf.channels_last={'cl' in tokens}",
            "perf.sample_precision=" + ("bf16" if "bf16" in tokens else "32"),
            "perf.fused_optimizer=true", "module.lr_warmup_steps=0",
            # No Trainer here: the NaN check (every log_every_n_steps in Trainer.fit, each a GPU sync; with no
            # Trainer global_step stays 0, so it would run at every step) is in the Trainer.fit figure; self.log
            # without a Trainer returns at once.
            "module.check_every_n_steps=0"])
    module = build_module(cfg).cuda()
    module.configure_model()  # what Trainer.fit calls first: with cl, the parameters become NHWC
    opt = module.configure_optimizers()["optimizer"]
    amp = torch.autocast("cuda", dtype=torch.bfloat16, enabled="bf16" in tokens)
    state: dict[str, torch.Tensor] = {}

    def forward() -> None:
        with amp:
            state["loss"] = module.training_step(state["x"], 0)

    def clip() -> None:
        module.configure_gradient_clipping(opt, 1.0, "norm")  # what Trainer.fit calls: norm, clip, log

    def optimizer() -> None:
        opt.step()
        opt.zero_grad(set_to_none=True)

    # one training step, in the order Trainer.fit runs it; EMA: a steady-state update (decay ema_decay)
    parts = [("forward", forward), ("backward", lambda: state["loss"].backward()), ("clip", clip),
             ("optimizer", optimizer), ("ema", lambda: module.ema.step(module.net, 1))]

    def step(x: torch.Tensor) -> torch.Tensor:
        state["x"] = x
        for _, part in parts:
            part()
        return state.pop("loss").detach()

    def parts_for(x: torch.Tensor) -> list[tuple[str, Callable[[], None]]]:
        state["x"] = x
        return parts

    step.parts_for = parts_for  # type: ignore[attr-defined]
    return module, step


def ours(mode: str, batch: int):
    from ddpm.core.samplers import AncestralSampler

    module, train_step = build_ours(mode)
    x = torch.rand(batch, 3, 32, 32, device="cuda") * 2 - 1

    def step():
        train_step(x)

    step.parts = train_step.parts_for(x)  # type: ignore[attr-defined]

    samplers: dict[int, AncestralSampler] = {}

    def sample(n: int, steps: int):
        """`steps` ancestral steps (a respaced chain) through the module's sampling pipeline: EMA network compiled
        for CUDA graphs, bf16 as the mode says, the output read by the parametrization."""
        if steps not in samplers:
            samplers[steps] = AncestralSampler(module.diffusion, num_steps=steps, progress=False)
        module.pipeline().with_sampler(samplers[steps]).sample(n, seed=0)

    return step, sample, sum(p.numel() for p in module.net.parameters())


# ----- peers -----------------------------------------------------------------------------------
def diffusers_peer(mode: str, batch: int):
    from diffusers import DDPMScheduler, UNet2DModel

    net = UNet2DModel(sample_size=32, in_channels=3, out_channels=3, layers_per_block=2,
                      block_out_channels=(128, 256, 256, 256),
                      down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
                      up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"), dropout=0.1).cuda()
    sched = DDPMScheduler(num_train_timesteps=1000)
    opt = torch.optim.Adam(net.parameters(), lr=2e-4)
    fwd = torch.compile(net) if "compile" in mode else net
    x = torch.rand(batch, 3, 32, 32, device="cuda") * 2 - 1
    amp = torch.autocast("cuda", dtype=torch.bfloat16, enabled="bf16" in mode)

    def step():
        noise = torch.randn_like(x)
        t = torch.randint(0, 1000, (batch,), device="cuda")
        with amp:
            pred = fwd(sched.add_noise(x, noise, t), t).sample
            loss = torch.nn.functional.mse_loss(pred.float(), noise)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    def sample(n: int, steps: int):
        sched.set_timesteps(1000)
        xs = torch.randn(n, 3, 32, 32, device="cuda")
        net.eval()
        with torch.no_grad(), amp:
            for t in sched.timesteps[:steps]:
                xs = sched.step(fwd(xs, t).sample, t, xs).prev_sample
        net.train()

    return step, sample, sum(p.numel() for p in net.parameters())


def lucidrains_peer(mode: str, batch: int):
    from denoising_diffusion_pytorch import GaussianDiffusion, Unet

    net = Unet(dim=128, dim_mults=(1, 2, 2, 2), flash_attn=True)
    diffusion = GaussianDiffusion(net, image_size=32, timesteps=1000, objective="pred_noise").cuda()
    opt = torch.optim.Adam(diffusion.parameters(), lr=2e-4)
    x = torch.rand(batch, 3, 32, 32, device="cuda")  # lucidrains normalises [0, 1] -> [-1, 1] inside
    amp = torch.autocast("cuda", dtype=torch.bfloat16, enabled="bf16" in mode)
    if "compile" in mode:
        diffusion.model = torch.compile(diffusion.model)

    def step():
        with amp:
            loss = diffusion(x)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(diffusion.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    def sample(n: int, steps: int):
        diffusion.eval()
        img = torch.randn(n, 3, 32, 32, device="cuda")
        with torch.no_grad(), amp:
            for t in range(steps - 1, -1, -1):
                img, _ = diffusion.p_sample(img, t)
        diffusion.train()

    return step, sample, sum(p.numel() for p in net.parameters())


def check_fast_path(mode: str, steps: int = 4) -> bool:
    """The fast mode's losses and gradients against fp32 eager, same weights, t and noise.

    On unet_tiny (no dropout, so both paths compute the same function; the same blocks as unet_base:
    convolutions that halve the channels, attention, GroupNorm), which compiles in seconds.

    bf16 autocast rounds activations to 8 bits of mantissa: the stated tolerances are 2e-2 relative on the
    loss and 5e-2 on the gradient vector (||g_fast - g_ref|| / ||g_ref||); CUDA-graph replays (steps 2..)
    must agree as well as the first call."""
    results = {}
    for m in ("fp32", mode):
        torch.manual_seed(0)
        module, _ = build_ours(m, "unet_tiny")
        torch.manual_seed(1)
        x = torch.rand(64, 3, 32, 32, device="cuda") * 2 - 1
        opt = module.configure_optimizers()["optimizer"]
        amp = torch.autocast("cuda", dtype=torch.bfloat16, enabled="bf16" in m.split("+"))
        losses, grads = [], []
        for _ in range(steps):
            with amp:
                loss = module.training_step(x, 0)
            loss.backward()
            losses.append(loss.item())
            grads.append(torch.cat([p.grad.flatten().double() for p in module.net.parameters()]))
            opt.step()
            opt.zero_grad(set_to_none=True)
        results[m] = losses, grads
        del module
    ok = True
    for i, ((l_ref, g_ref), (l_fast, g_fast)) in enumerate(zip(zip(*results["fp32"]), zip(*results[mode]))):
        loss_err = abs(l_fast - l_ref) / abs(l_ref)
        grad_err = ((g_fast - g_ref).norm() / g_ref.norm()).item()
        ok &= loss_err < 2e-2 and grad_err < 5e-2
        print(f"# check {mode} step {i}: loss {l_fast:.5f} vs fp32 {l_ref:.5f} (rel {loss_err:.1e}), "
              f"gradient rel err {grad_err:.1e}", flush=True)
    print(f"# check {mode}: {'PASS' if ok else 'FAIL'}", flush=True)
    return ok


IMPLS = {"ours": ours, "diffusers": diffusers_peer, "lucidrains": lucidrains_peer}

# kernel-name patterns -> where the time goes (first match wins)
CATEGORIES = [
    ("attention (flash / mem-efficient)", ("flash", "fmha", "attention", "efficient_attention")),
    ("optimizer / EMA / clip (multi-tensor)", ("multi_tensor", "fused_adam", "adam", "foreach", "lerp")),
    ("layout transposes", ("nchwtonhwc", "nhwctonchw", "transpose", "permute")),
    ("convolution (cuDNN / CUTLASS)", ("conv", "cudnn", "xmma", "dgrad", "wgrad", "fprop", "implicit", "sm90_",
                                       "cutlass", "winograd")),
    ("matmul (cuBLAS)", ("gemm", "nvjet", "cublas")),
    ("fused pointwise / norm (Triton)", ("triton",)),
    ("group norm (aten)", ("group_norm", "groupnorm", "rowwisemoments", "compute_stats")),
    ("other elementwise / reduce (aten)", ("elementwise", "reduce", "vectorized", "index", "cat", "copy", "fill")),
    ("memcpy / memset", ("memcpy", "memset")),
]


def profile(label: str, fn: Callable[[], None], calls: int, out_dir: Path | None) -> None:
    """Kernel time per call by category, GPU busy vs wall time, and the 30 costliest kernels."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    fn()
    torch.cuda.synchronize()
    with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
        wall_ms = (time.perf_counter() - start) * 1e3 / calls
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    by_cat: dict[str, float] = {}
    by_name: dict[str, list[float]] = {}
    for e in kernels:
        us = e.time_range.elapsed_us()
        low = e.name.lower()
        cat = next((c for c, keys in CATEGORIES if any(k in low for k in keys)), "other")
        by_cat[cat] = by_cat.get(cat, 0.0) + us / 1e3 / calls
        by_name.setdefault(e.name[:110], []).append(us)
    busy = sum(by_cat.values())
    print(f"\n## profile {label}: wall {wall_ms:.2f} ms/call (profiler on), kernels {busy:.2f} ms/call "
          f"({len(kernels) / calls:.0f} launches/call), GPU idle {max(wall_ms - busy, 0):.2f} ms/call")
    for cat, ms in sorted(by_cat.items(), key=lambda kv: -kv[1]):
        print(f"  {ms:8.2f} ms {100 * ms / max(busy, 1e-9):5.1f}%  {cat}")
    print("  top kernels (ms/call, launches/call, name):")
    for name, us in sorted(by_name.items(), key=lambda kv: -sum(kv[1]))[:30]:
        print(f"  {sum(us) / 1e3 / calls:8.2f} {len(us) / calls:5.0f}  {name}")
    if out_dir is not None:
        path = out_dir / f"trace_{label.replace('+', '_').replace(' ', '_')}.json"
        prof.export_chrome_trace(str(path))
        subprocess.run(["gzip", "-f", str(path)], check=True)  # a few MB: small enough to bring back


def host_breakdown(parts: list[tuple[str, Callable[[], None]]], steps: int = 7) -> None:
    """Host (CPU) milliseconds of each part of a training step, each started on a drained GPU.

    A part whose host time is large either costs that much Python / launch time or waits for the GPU itself;
    with every part starting on an idle GPU, the sum is what the CPU needs per step. If it is near the
    step's wall time, the step is bound by the CPU."""
    times: dict[str, list[float]] = {name: [] for name, _ in parts}
    for _ in range(steps):
        for name, part in parts:
            torch.cuda.synchronize()
            start = time.perf_counter()
            part()
            times[name].append((time.perf_counter() - start) * 1e3)
    torch.cuda.synchronize()
    med = {name: statistics.median(ts) for name, ts in times.items()}
    print("  host ms per part (GPU drained before each): " + ", ".join(f"{n} {ms:.2f}" for n, ms in med.items())
          + f"; total {sum(med.values()):.2f}", flush=True)


def group_norm_by_channel(self: torch.nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
    """Experiment (mode token gn2): GroupNorm from per-channel statistics, combined per group.

    The same function as F.group_norm under autocast (fp32 statistics and output, two-pass variance); the
    reductions run over H*W for each channel, which in the NHWC layout reads contiguous channel rows."""
    n, c = x.shape[:2]
    g = self.num_groups
    xf = x.float()
    per_group = lambda s: s.view(n, g, c // g).mean(-1)[:, :, None].expand(n, g, c // g).reshape(n, c, 1, 1)  # noqa
    mean = per_group(xf.mean((2, 3)))  # (N, C, 1, 1)
    centered = xf - mean
    rstd = torch.rsqrt(per_group(centered.square().mean((2, 3))) + self.eps)
    return centered * rstd * self.weight.view(1, c, 1, 1) + self.bias.view(1, c, 1, 1)


def mode_patches(mode: str):
    """Experimental mode token gn2 (group_norm_by_channel), patched in for one measurement. Run it in a process
    of its own (one --modes entry): Dynamo may reuse a graph compiled under the patch for a later mode."""
    from contextlib import ExitStack
    from unittest import mock

    stack = ExitStack()
    if "gn2" in mode.split("+"):
        stack.enter_context(mock.patch.object(torch.nn.GroupNorm, "forward", group_norm_by_channel))
    return stack


def measure(name: str, mode: str, args) -> dict:
    with mode_patches(mode):
        return _measure(name, mode, args)


def _measure(name: str, mode: str, args) -> dict:
    torch.manual_seed(0)
    try:
        step, sample, n_params = IMPLS[name](mode, args.batch)
    except ImportError as err:
        return {"impl": name, "mode": mode, "error": f"not installed: {err}"}
    warm = args.compile_warmup if "compile" in mode else args.warmup
    sec = timed(step, warm, args.steps, args.repeats)
    mem, reserved = peak_gib(step)
    if args.profile:
        profile(f"{name} {mode} train", step, 3, args.trace_dir)
        if hasattr(step, "parts"):
            host_breakdown(step.parts)
    row = {"impl": name, "mode": mode, "params_M": round(n_params / 1e6, 2), "train_img_s": round(args.batch / sec, 1),
           "peak_alloc_GiB": round(mem, 2),
           "peak_reserved_GiB": round(reserved, 2)}
    if not args.no_sample:
        steps = 1000 if not args.quick else 100
        sample(args.sample_batch, 3 if "compile" not in mode else 5)  # warm-up (and CUDA-graph capture)
        torch.cuda.synchronize()
        start = time.perf_counter()
        sample(args.sample_batch, steps)
        torch.cuda.synchronize()
        per_image_1000 = (time.perf_counter() - start) * (1000 / steps) / args.sample_batch
        row["sample_img_s"] = round(1 / per_image_1000, 2)
        row["sample_steps_timed"] = steps
        if args.profile:
            profile(f"{name} {mode} sample x10 steps", lambda: sample(args.sample_batch, 10), 1, args.trace_dir)
    print(json.dumps(row), flush=True)
    step = sample = None  # free the compiled graphs before the next mode
    torch.cuda.empty_cache()
    return row


FIT_STEPS = 1200
FIT_OVERRIDES = ["model=unet_base", "data=synthetic", "trainer=gpu", "logger=csv",
                 "callbacks.sample_eval.fid_samples=0",
                 "callbacks.sample_eval.bpd_images=0", "callbacks.sample_eval.n_grid=16",
                 "callbacks.sample_eval.chain_frames=0", "trainer.val_check_interval=100000",
                 "callbacks.progress_bar.refresh_rate=0", "+callbacks.fit_phases._target_=fit_phases.FitPhases"]


def trainer_fit(log_dir: Path) -> float | None:
    """img/s of `train.py` (Trainer.fit: Lightning's loop, logging, checkpoints, the data module) in a subprocess."""
    import os
    import re

    cmd = [sys.executable, str(ROOT / "train.py"), *FIT_OVERRIDES, f"trainer.max_steps={FIT_STEPS}",
           f"paths.log_dir={log_dir}"]
    print("# Trainer.fit: " + " ".join(cmd[1:]), flush=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "benchmarks"), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=log_dir)
    lines = [line for line in out.stdout.splitlines() if line.startswith(("Throughput", "FitPhases"))]
    print("\n".join(f"# {line}" for line in lines) or f"# Trainer.fit failed:\n{out.stderr[-3000:]}", flush=True)
    found = re.search(r"Throughput: median (\d+) img/s", out.stdout)
    return float(found.group(1)) if found else None


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--sample-batch", type=int, default=256)
    p.add_argument("--impls", default="ours,diffusers,lucidrains")
    p.add_argument("--modes", default="bf16+compile+cg+cl", help="modes for ours (see the module docstring)")
    p.add_argument("--peer-modes", default="bf16+compile,bf16,fp32")
    p.add_argument("--no-sample", action="store_true")
    p.add_argument("--skip", default="lucidrains:bf16+compile,diffusers:fp32",
                   help="impl:mode pairs not run: lucidrains' compiled backward fails on torch 2.11 (RESULTS.md); "
                        "diffusers' fp32 ran at 1686 img/s vs 2174 in bf16 in the issue's own measurement")
    p.add_argument("--out", default=None)
    p.add_argument("--check", default=None, help="first compare this mode of ours with fp32 eager (losses, gradients)")
    p.add_argument("--profile", action="store_true", help="also print a kernel profile of each training step")
    p.add_argument("--trace-dir", type=Path, default=None, help="write the profiler's Chrome traces here")
    p.add_argument("--fit", action="store_true", help="also time Trainer.fit (train.py) against our first mode")
    p.add_argument("--fit-dir", type=Path, default=Path("/tmp/ddpm-bench-fit"), help="Trainer.fit's log dir")
    args = p.parse_args()
    args.warmup, args.compile_warmup = (5, 10) if args.quick else (10, 20)
    args.steps, args.repeats = (10, 3) if args.quick else (25, 5)
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    print(f"# {torch.cuda.get_device_name()} torch {torch.__version__} batch {args.batch} "
          f"sample batch {args.sample_batch} quick={args.quick}", flush=True)
    if args.check:
        try:
            check_fast_path(args.check)
        except Exception as err:  # report it, and still measure
            print(f"# check {args.check}: ERROR {type(err).__name__}: {err}", flush=True)
    rows = []
    for name in args.impls.split(","):
        for mode in (args.modes if name == "ours" else args.peer_modes).split(","):
            if f"{name}:{mode}" in args.skip.split(","):
                continue
            try:
                rows.append(measure(name, mode, args))
            except Exception as err:  # a peer's mode failing must not lose the other figures
                rows.append({"impl": name, "mode": mode, "error": f"{type(err).__name__}: {str(err)[:200]}"})
                print(json.dumps(rows[-1]), flush=True)
    ok = [r for r in rows if "error" not in r]
    best = {k: max((r for r in ok if r["impl"] != "ours"), key=lambda r: r.get(k, 0), default=None)
            for k in ("train_img_s", "sample_img_s")}
    print("\n| impl | mode | params (M) | train img/s | peak GiB reserved (allocated) | sample img/s (1000 steps) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        mem = f"{r['peak_reserved_GiB']} ({r['peak_alloc_GiB']})" if "peak_reserved_GiB" in r else ""
        print(f"| {r['impl']} | {r['mode']} | {r.get('params_M', '')} | {r.get('train_img_s', r.get('error', ''))} | "
              f"{mem} | {r.get('sample_img_s', '')} |")
    for k, peer in best.items():
        our_best = max((r.get(k, 0) for r in ok if r["impl"] == "ours"), default=0)
        if peer:
            print(f"ours/best peer {k}: {our_best / peer[k]:.2f}x (peer: {peer['impl']} {peer['mode']} {peer[k]})")
    ours_first = next((r for r in ok if r["impl"] == "ours"), None)
    if args.fit and ours_first:
        args.fit_dir.mkdir(parents=True, exist_ok=True)
        fit = trainer_fit(args.fit_dir)
        if fit:
            ours_first["trainer_fit_img_s"] = fit
            print(f"Trainer.fit / training step ({ours_first['mode']}): {fit:.0f} / {ours_first['train_img_s']:.0f} = "
                  f"{fit / ours_first['train_img_s']:.1%}")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
