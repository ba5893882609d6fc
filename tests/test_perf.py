"""The execution plan: what each perf option resolves to per device, and that it stays on public APIs."""


import pytest
import torch

from ddpm.errors import ConfigError
from ddpm.runtime.perf import COMPILE_MODES, resolve_plan
from ddpm.tasks.config import to_plain
from tests.conftest import ROOT, compose

CPU, CUDA = torch.device("cpu"), torch.device("cuda")  # a device object needs no GPU


def perf(option: str, **changes) -> dict:
    return {**to_plain(compose([f"perf={option}"]).perf), **changes}


def test_compile_modes_are_torchs_own_mode_options():
    """torch.compile takes a mode or options, not both: our table must stay torch's list of mode options."""
    from torch._inductor import list_mode_options

    for mode, options in COMPILE_MODES.items():
        assert options == list_mode_options(mode), mode


def test_auto_is_the_fast_path_on_cuda_and_eager_fp32_on_a_cpu():
    on_cpu, on_cuda = resolve_plan(perf("auto"), CPU), resolve_plan(perf("auto"), CUDA)
    assert not (on_cpu.compile or on_cpu.channels_last or on_cpu.fused_optimizer or on_cpu.sample_bf16)
    assert on_cpu.data_on_device_max_gib == 0 and not on_cpu.cuda_graphs
    assert on_cuda.compile and on_cuda.channels_last and on_cuda.fused_optimizer and on_cuda.sample_bf16
    assert on_cuda.cuda_graphs and on_cuda.data_on_device_max_gib == 2.0
    assert on_cuda.batch_memory_format == torch.contiguous_format  # compiled: the graph lays out NHWC itself


def test_gpu_and_cpu_options_force_their_choices_on_any_device():
    forced = resolve_plan(perf("gpu"), CPU)
    assert forced.compile and forced.channels_last and forced.sample_bf16
    assert not forced.cuda_graphs  # no CUDA graphs on a CPU
    plain = resolve_plan(perf("cpu"), CUDA)
    assert not (plain.compile or plain.channels_last or plain.fused_optimizer or plain.sample_bf16)
    assert plain.data_on_device_max_gib == 0
    assert resolve_plan(None, CUDA) == resolve_plan(perf("cpu"), CUDA)  # no perf config: eager fp32


@pytest.mark.parametrize("change, message", [
    ({"compile": "sometimes"}, "perf.compile must be true, false or auto"),
    ({"compile_mode": "fastest"}, "perf.compile_mode must be one of"),
    ({"compile_scope": "layers"}, "perf.compile_scope must be one of"),
    ({"sample_precision": "fp8"}, "perf.sample_precision must be 32, bf16 or auto"),
    ({"data_on_device_max_gib": -1.0}, "data_on_device_max_gib must be >= 0"),
    ({"unknown": 1}, "unexpected keyword argument 'unknown'"),
])
def test_bad_perf_values_are_one_config_error(change, message):
    with pytest.raises(ConfigError, match=message):
        resolve_plan(perf("auto", **change), CPU)


def test_checkpoints_from_before_the_perf_group_load(tmp_path):
    """A checkpoint whose hyperparameters hold the old module-level switches rebuilds with the same plan."""
    from ddpm.tasks.train import build_module
    from ddpm.training.module import DiffusionModule

    module = build_module(compose(["model=unet_tiny", "scheduler.num_timesteps=10"]))
    hparams = {k: v for k, v in module.hparams.items() if k != "perf"}
    old = DiffusionModule(**hparams, compile=False, compile_mode="reduce-overhead", channels_last="auto",
                          fused_optimizer="auto", sample_precision="auto")
    assert old.hparams.perf["channels_last"] == "auto" and "compile" not in old.hparams
    assert resolve_plan(old.hparams.perf, CUDA).channels_last and not resolve_plan(old.hparams.perf, CUDA).compile


def test_nothing_in_the_repo_points_outside_it():
    texts = [p for d in ("conf", "tests", "docs", "src", "benchmarks") for p in (ROOT / d).rglob("*")
             if p.is_file() and p.suffix in (".py", ".yaml", ".md")] + [ROOT / "README.md"]
    outside = "../" + "shared"  # the project's seed documents: the repo must stand alone
    assert [str(p) for p in texts if outside in p.read_text()] == []


def test_regional_compilation_compiles_each_repeated_block_in_place():
    from ddpm.nn.unet import AttentionBlock, ResBlock

    perf = {**to_plain(compose(["perf=cpu"]).perf), "compile": True, "compile_scope": "regional",
            "compile_cache_dir": None}
    net = instantiate_unet()
    keys = list(net.state_dict())
    out = resolve_plan(perf, torch.device("cpu")).compile_network(net, sampling=False)
    assert out is net and list(out.state_dict()) == keys  # the checkpoint's keys do not change
    blocks = [m for m in net.modules() if isinstance(m, (ResBlock, AttentionBlock))]
    assert blocks and all(m._compiled_call_impl is not None for m in blocks)
    assert net._compiled_call_impl is None  # the glue stays eager
    with pytest.raises(ConfigError, match="marks no block"):
        resolve_plan(perf, torch.device("cpu")).compile_network(torch.nn.Linear(2, 2), sampling=False)


def instantiate_unet():
    from ddpm.io.compat import instantiate

    return instantiate(to_plain(compose(["model=unet_tiny"]).model))


CACHE_PROBE = """
import json, sys, torch
from ddpm.runtime.perf import compile_stats, resolve_plan
perf = {"compile": True, "compile_mode": "default", "channels_last": False, "fused_optimizer": False,
        "sample_precision": "32", "data_on_device": False, "data_on_device_max_gib": 0.0, "compile_scope": "model",
        "compile_cache_dir": sys.argv[1]}
net = resolve_plan(perf, torch.device("cpu")).compile_network(torch.nn.Linear(4, 4), sampling=False)
net(torch.randn(2, 4)).sum().backward()
print(json.dumps(compile_stats()))
"""


@pytest.mark.slow
def test_a_second_process_compiles_from_the_kept_cache(tmp_path):
    """perf.compile_cache_dir: the second process finds the first one's FX graphs and AOTAutograd entries there
    (compile_stats, what StartupReport logs), whatever torch's default folder holds."""
    import json
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")}
    env["PYTHONPATH"] = str(ROOT / "src")

    def run() -> dict:
        proc = subprocess.run([sys.executable, "-c", CACHE_PROBE, str(tmp_path / "cache")], capture_output=True,
                              text=True, env=env, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return json.loads(proc.stdout.strip().splitlines()[-1])

    first, second = run(), run()
    assert first["fx_graph_cache_misses"] > 0 and first["fx_graph_cache_hits"] == 0
    assert second["fx_graph_cache_hits"] == first["fx_graph_cache_misses"] and second["fx_graph_cache_misses"] == 0
    assert second["aot_autograd_cache_hits"] >= 1
    assert first["cache_dir"] == second["cache_dir"] == str(tmp_path / "cache")
