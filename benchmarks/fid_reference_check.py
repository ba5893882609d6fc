"""Where the classifier-FID scale sits: held-out real images vs the cached train reference, and the samples
of an untrained network (random weights, its zero-initialised layers perturbed so eps_theta is not 0).

    python benchmarks/fid_reference_check.py digits fashion_mnist

CPU is enough; 32x32 data takes minutes (1000 network calls per sample). Uses the same cache/ as train.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import ddpm.tasks  # noqa: E402,F401  (registers the config resolvers)
from ddpm.metrics import SampleMetrics  # noqa: E402
from ddpm.tasks.config import to_plain  # noqa: E402
from ddpm.tasks.train import build_module  # noqa: E402


def check(data: str, n_real: int = 1000, n_fake: int = 256) -> None:
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"data={data}", "model=unet_tiny", "data.num_workers=0"])
    dm = instantiate(cfg.data)
    dm.check()
    dm.setup()
    metrics = SampleMetrics(**to_plain(cfg.fid))
    metrics.prepare(dm)
    val, _ = dm.labeled_images("val")
    val = val[:n_real]
    metrics.update(val.float() / 127.5 - 1)
    real = metrics.compute(len(val))
    torch.manual_seed(0)
    module = build_module(cfg)
    module.sampler.progress = False
    with torch.no_grad():
        for p in module.net.parameters():
            p.add_(0.02 * torch.randn_like(p))
        module.ema.module.load_state_dict(module.net.state_dict())
    metrics.update(module.pipeline().sample(n_fake, seed=0).images)
    untrained = metrics.compute(n_fake)
    print(f"{data}: held-out real {real}  untrained network {untrained}", flush=True)


if __name__ == "__main__":
    for name in sys.argv[1:] or ["digits"]:
        check(name)
