"""The execution plan: how the math runs on this device (compile, CUDA graphs, layout, fused optimizer,
sample precision, data held on the device). Execution only: the math and the checkpoints are the same
whichever plan runs them.

The `perf` config group (`auto`, `gpu`, `cpu`) says what is wanted; `resolve_plan` turns it into one frozen
`ExecutionPlan` for the training device, once (DiffusionModule.setup), and the module and the data module
read that object: no option is re-decided per step.

Cold start. torch.compile's cost is paid at the first step: Dynamo traces, AOTAutograd builds the backward,
Inductor generates and Triton compiles the kernels. Its caches (the FX graph cache, the AOTAutograd cache and
Triton's kernels) skip all but the tracing on a later run that compiles the same graphs -- if that run finds them:
`compile_cache_dir` keeps them in one folder every run of the project reads (a sweep's later jobs, a resumed run,
eval.py), not in a temporary folder. `compile_scope=regional` compiles each repeated block of the network (the
classes marked `compile_region`) instead of the whole network: blocks of the same shapes share one compiled graph,
the glue between them runs eagerly. `compile_stats` says what was compiled, how long it took and what came from
the caches (logged by `training.compute.StartupReport`).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, fields
from typing import Any

import torch

from ddpm.errors import ConfigError

# torch.compile's modes as Inductor options: torch.compile takes a mode or options, not both, and the forced
# NHWC layout needs options. The same table as torch's own list of mode options (tests/test_perf.py checks it).
COMPILE_MODES: dict[str, dict[str, bool]] = {
    "default": {},
    "reduce-overhead": {"triton.cudagraphs": True},
    "max-autotune-no-cudagraphs": {"max_autotune": True, "coordinate_descent_tuning": True},
    "max-autotune": {"max_autotune": True, "triton.cudagraphs": True, "coordinate_descent_tuning": True},
}
SAMPLE_MODE = "reduce-overhead"  # sampling runs the same shapes T times: CUDA graphs remove the launch overhead
COMPILE_SCOPES = ("model", "regional")


@dataclass(frozen=True)
class Perf:
    """The `perf` config group, as written (each switch: true, false or "auto" = on when training on CUDA)."""

    compile: bool | str
    compile_mode: str
    channels_last: bool | str
    fused_optimizer: bool | str
    sample_precision: str
    data_on_device: bool | str
    data_on_device_max_gib: float
    compile_scope: str = "model"  # the defaults: runs saved before these keys existed
    compile_cache_dir: str | None = None


@dataclass(frozen=True)
class ExecutionPlan:
    device: torch.device
    compile: bool = False
    compile_mode: str = "default"
    compile_scope: str = "model"
    compile_cache_dir: str | None = None
    channels_last: bool = False
    fused_optimizer: bool = False
    sample_bf16: bool = False
    data_on_device_max_gib: float = 0.0  # hold the training split on `device` up to this size; 0 never, inf always

    @property
    def cuda_graphs(self) -> bool:
        """Training steps replayed as CUDA graphs (each step must then mark its start)."""
        graphs = self._options(self.compile_mode).get("triton.cudagraphs", False)
        return self.compile and self.device.type == "cuda" and graphs

    @property
    def batch_memory_format(self) -> torch.memory_format:
        """NHWC batches in eager channels_last mode; compiled, the batch stays NCHW (the graph lays its
        activations out NHWC itself: force_layout_optimization)."""
        return torch.channels_last if self.channels_last and not self.compile else torch.contiguous_format

    def _options(self, mode: str) -> dict[str, bool]:
        return dict(COMPILE_MODES[mode if self.device.type == "cuda" else "default"])

    def compile_network(self, net: torch.nn.Module, sampling: bool) -> torch.nn.Module:
        """`net` compiled for training (compile_mode) or sampling (CUDA graphs), or `net` itself.

        With channels_last, Inductor is told to keep every activation NHWC: its own heuristic skips this
        U-Net (some convolutions halve the channels), and cuDNN then transposes around each convolution."""
        if not self.compile:
            return net
        use_compile_cache(self.compile_cache_dir)
        options = self._options(SAMPLE_MODE if sampling else self.compile_mode)
        if self.channels_last:
            options["force_layout_optimization"] = True
        if self.compile_scope == "regional":
            regions = [m for m in net.modules() if getattr(type(m), "compile_region", False)]
            if not regions:
                raise ConfigError(f"perf.compile_scope=regional: {type(net).__name__} marks no block as a "
                                  "compile_region; use perf.compile_scope=model")
            for region in regions:  # in place: the module, its parameters and its state_dict keys stay as they are
                region.compile(options=options or None, dynamic=False)
            return net
        return torch.compile(net, options=options or None, dynamic=False)  # type: ignore[return-value]

    def holds_data(self, nbytes: int) -> bool:
        return nbytes / 2**30 <= self.data_on_device_max_gib


def resolve_plan(perf: dict[str, Any] | None, device: torch.device, precision: str = "32-true") -> ExecutionPlan:
    """The plan for training (or sampling) on `device` with the Trainer's `precision`; None: plain eager fp32."""
    if perf is None:
        return ExecutionPlan(device=device)
    try:
        p = Perf(**perf)
    except TypeError as err:
        raise ConfigError(f"perf: {err}; expected the keys {[f.name for f in fields(Perf)]} (see conf/perf/)") from err
    if p.compile_mode not in COMPILE_MODES:
        raise ConfigError(f"perf.compile_mode must be one of {list(COMPILE_MODES)}, got {p.compile_mode!r}")
    if p.compile_scope not in COMPILE_SCOPES:
        raise ConfigError(f"perf.compile_scope must be one of {list(COMPILE_SCOPES)}, got {p.compile_scope!r}")
    if str(p.sample_precision) not in ("32", "bf16", "auto"):  # Hydra reads `sample_precision=32` as an int
        raise ConfigError(f"perf.sample_precision must be 32, bf16 or auto, got {p.sample_precision!r}")
    if not p.data_on_device_max_gib >= 0:
        raise ConfigError(f"perf.data_on_device_max_gib must be >= 0, got {p.data_on_device_max_gib}")
    cuda = device.type == "cuda"

    def switch(name: str) -> bool:
        value = getattr(p, name)
        if value not in (True, False, "auto"):
            raise ConfigError(f"perf.{name} must be true, false or auto, got {value!r}")
        return cuda if value == "auto" else bool(value)

    compile = switch("compile")
    plan = ExecutionPlan(
        device=device, compile=compile, compile_mode=p.compile_mode, compile_scope=p.compile_scope,
        compile_cache_dir=p.compile_cache_dir if compile else None, channels_last=switch("channels_last"),
        fused_optimizer=switch("fused_optimizer"),
        sample_bf16=str(p.sample_precision) == "bf16" or (p.sample_precision == "auto" and cuda),
        data_on_device_max_gib=(math.inf if p.data_on_device is True else
                                p.data_on_device_max_gib if p.data_on_device == "auto" and cuda else 0.0),
    )
    switch("data_on_device")  # validates it
    if plan.fused_optimizer and str(precision) == "16-mixed":
        raise ConfigError("perf.fused_optimizer cannot be combined with trainer.precision=16-mixed (the fused step "
                          "unscales the gradients after clipping); use bf16-mixed or perf.fused_optimizer=false")
    return plan


def use_compile_cache(directory: str | None) -> None:
    """Keep torch.compile's caches (Inductor's FX graphs, AOTAutograd's, Triton's kernels) in `directory` (None:
    torch's own choice, TORCHINDUCTOR_CACHE_DIR or a folder under /tmp). Set before a process compiles anything,
    as the plan does at its first compile."""
    if directory is None:
        return
    path = os.path.abspath(os.path.expanduser(str(directory)))
    os.makedirs(path, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = path
    os.environ.pop("TRITON_CACHE_DIR", None)  # Triton's kernels then go to <path>/triton


def compile_stats() -> dict[str, Any]:
    """What torch.compile did in this process so far: seconds spent (Dynamo's frame compile, Inductor's
    compile, the backward's), graphs compiled, and the hits and misses of the FX graph and AOTAutograd caches.
    Read from torch._dynamo's counters (private API: missing entries read 0)."""
    try:
        from torch._dynamo.utils import calculate_time_spent, counters
    except ImportError:  # pragma: no cover - torch without dynamo
        return {}
    spent = calculate_time_spent()
    inductor, aot = counters["inductor"], counters["aot_autograd"]
    return {"compile_seconds": round(float(spent.get("entire_frame_compile", 0.0))
                                     + float(spent.get("entire_backward_compile", 0.0)), 2),
            "inductor_seconds": round(float(spent.get("inductor_compile", 0.0)), 2),
            "graphs": int(counters["stats"]["unique_graphs"]),
            "fx_graph_cache_hits": int(inductor["fxgraph_cache_hit"]),
            "fx_graph_cache_misses": int(inductor["fxgraph_cache_miss"]),
            "aot_autograd_cache_hits": int(aot["autograd_cache_hit"]),
            "aot_autograd_cache_misses": int(aot["autograd_cache_miss"]),
            "cache_dir": os.environ.get("TORCHINDUCTOR_CACHE_DIR")}


def match_state_layout(optimizer: torch.optim.Optimizer) -> None:
    """Give each per-parameter state tensor (Adam's moments, SGD's momentum) its parameter's strides.

    Fused multi-tensor kernels walk a parameter and its state as flat memory: an NCHW exp_avg next to an NHWC
    parameter would update each weight with another weight's moments, silently (torch 2.14, CPU and CUDA).
    This happens when a checkpoint saved from NCHW parameters resumes with channels_last on."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state.get(p, {})
            for key, value in state.items():
                if torch.is_tensor(value) and value.shape == p.shape and value.stride() != p.stride():
                    state[key] = torch.empty_like(p, dtype=value.dtype).copy_(value)
