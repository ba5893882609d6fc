"""Does FID over N GPUs equal FID on one? The same images, fed whole on one rank or sharded over N ranks.

Training and eval.py shard sampling over ranks and let torchmetrics sum the feature statistics at
`compute()`; only rank 0 holds the reference statistics. If that were wrong (reference counted N times,
a shard lost), the value would move far beyond float64 summation order. tests/test_ddp.py runs it with 1 and
2 CPU processes (gloo); on a multi-GPU machine:

    python tests/ddp_fid_check.py --devices 1
    python tests/ddp_fid_check.py --devices 2      # prints the same value, to ~1e-9 relative

The "generated" images are the digits validation images with fixed Gaussian noise added (identical
on every rank), so the distance is non-trivial; the classifier features need no download.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--devices", type=int, default=1)
    p.add_argument("--n", type=int, default=1000, help="images fed to the metric, over all ranks")
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--noise", type=float, default=0.3)
    p.add_argument("--accelerator", default="cuda", help="cpu: the same check with gloo processes")
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. fid.classifier.steps=150 (a quicker classifier)")
    args = p.parse_args()

    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate
    from lightning.fabric import Fabric

    from ddpm.metrics import SampleMetrics
    from ddpm.tasks.config import to_plain

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["data=digits", "fid=classifier", *args.overrides])
    fabric = Fabric(accelerator=args.accelerator, devices=args.devices, strategy="ddp" if args.devices > 1 else "auto")
    fabric.launch()
    rank, world = fabric.global_rank, fabric.world_size

    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    metrics = SampleMetrics(**to_plain(cfg.fid))
    metrics.prepare_on_ranks(datamodule, fabric.device, rank == 0, fabric.barrier)

    val_uint8, _ = datamodule.labeled_images("val")  # (n_val, C, H, W)
    val = val_uint8.float() / 127.5 - 1
    g = torch.Generator().manual_seed(0)
    idx = torch.arange(args.n) % len(val)
    images = (val[idx] + args.noise * torch.randn(val[idx].shape, generator=g)).clamp(-1, 1)  # same on every rank
    mine = images[rank::world]
    for start in range(0, len(mine), args.batch):
        metrics.update(mine[start:start + args.batch].to(fabric.device))
    result = metrics.compute(args.n)
    if rank == 0:
        print(json.dumps({"devices": world, **result}), flush=True)


if __name__ == "__main__":
    main()
