"""Classifier-free guidance on a class-conditional checkpoint: FID and class accuracy against the guidance scale.

    python benchmarks/guidance.py CKPT [--n 2000] [--scales 0 0.5 1 2 4] [--sampler ddim --steps 50 --eta 1]
                                       [--grids DIR] [--perf cpu]

For each w, `n` samples balanced over the classes (sample i of class (i // 8) % K, the same seeds for every w)
from the EMA weights: FID under the run's FID features and class accuracy, the share the feature classifier
puts in the class asked for. The row `unconditional` samples the same network with the null label (the
unconditional model CFG trains alongside) and scores it against the same balanced labels: chance, 1 / K.
`--grids DIR` writes one PNG per w: 8 samples per row, one row per class.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from samplers import load, make_sampler, sync


def main() -> None:
    from torchvision.utils import save_image

    from ddpm.core.images import to_grid
    from ddpm.pipeline import SampleRequest

    p = argparse.ArgumentParser()
    p.add_argument("ckpt", type=Path)
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scales", type=float, nargs="+", default=[0.0, 0.5, 1.0, 2.0, 4.0])
    p.add_argument("--sampler", default="ddim")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--eta", type=float, default=1.0)
    p.add_argument("--grids", type=Path, default=None)
    p.add_argument("--perf", default=None, help="an execution plan of conf/perf (default: the checkpoint's)")
    args = p.parse_args()

    pipeline, dm, metrics = load(args.ckpt, args.perf)
    if pipeline.num_classes is None:
        raise SystemExit(f"{args.ckpt} is not class-conditional (model.num_classes is null)")
    overrides = {"num_steps": args.steps} | ({"eta": args.eta} if args.sampler == "ddim" else {})
    pipeline = pipeline.with_sampler(make_sampler(pipeline, args.sampler, overrides))
    sampler, k, rows = pipeline.sampler, pipeline.num_classes, []
    for w in args.scales:
        sync()
        start = time.perf_counter()
        request = SampleRequest(n=args.n, batch_size=args.batch, seed=args.seed, keep=8 * k, per_row=8,
                                guidance_scale=w)
        samples = pipeline.draw(request, to_eval=dm.to_eval, metrics=metrics)
        sync()
        result = metrics.compute(samples.n_total)
        rows.append({"w": w, "s": 1 + w, **result, "seconds": round(time.perf_counter() - start, 1)})
        print(json.dumps(rows[-1]), flush=True)
        if args.grids is not None:
            args.grids.mkdir(parents=True, exist_ok=True)
            save_image(to_grid(samples.images, 8, 2), args.grids / f"guidance_w{w:g}.png")
    # the null label for every sample, scored against the balanced labels the guided rows ask for: chance
    unconditional = SampleRequest(n=args.n, batch_size=args.batch, seed=args.seed, per_row=8, null_label=True)
    pipeline.draw(unconditional, to_eval=dm.to_eval, metrics=metrics)
    rows.append({"w": "unconditional", "s": "-", **metrics.compute(args.n)})
    print(json.dumps(rows[-1]), flush=True)
    fid = metrics.fid_name
    print(f"\nsampler: {sampler.describe()}, NFE {sampler.nfe} (x2 batch when w > 0), n = {args.n} per row\n")
    print(f"| w (s = 1 + w) | {fid} | class accuracy |")
    print("|---|---|---|")
    for r in rows:
        label = r["w"] if r["w"] == "unconditional" else f"{r['w']:g} ({r['s']:g})"
        print(f"| {label} | {r[fid]:.3f} | {r['class_accuracy']:.1%} |")


if __name__ == "__main__":
    main()
