"""Does a metric rank known-good against known-bad the right way? Two checks, one table each.

    # real held-out images, clean and degraded (src/ddpm/degradations.py), scored against the train reference
    python benchmarks/metric_quality.py degradations --data fashion_mnist --fid classifier inception --n 2000
    # sample sets (uint8 .npz files, key arr_0, as eval.py writes): every metric, and their rank agreement
    python benchmarks/metric_quality.py sets --data fashion_mnist --fid classifier inception DIR/*.npz

A degradation passes when every strength scores worse than the clean set and each stronger one worse than the
milder one. Prints markdown tables (benchmarks/QUALITY.md holds the current ones). Uses the same cache/ as
train.py; Hydra overrides of conf/train.yaml after `--` (e.g. `-- fid.classifier.steps=3000`).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import ddpm.tasks  # noqa: E402,F401  (registers the config resolvers)
from ddpm.metrics import SampleMetrics  # noqa: E402
from ddpm.metrics.degradations import SUITE  # noqa: E402
from ddpm.tasks.config import to_plain  # noqa: E402


def setup(data: str, fid: str, overrides: list[str], device: str) -> tuple[object, SampleMetrics]:
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"data={data}", f"fid={fid}", "data.num_workers=0", *overrides])
    dm = instantiate(cfg.data)
    dm.check()
    dm.setup()
    metrics = SampleMetrics(**to_plain(cfg.fid))
    metrics.prepare(dm, device)
    return dm, metrics


def score(metrics: SampleMetrics, images: torch.Tensor, device: str, batch: int = 500) -> dict[str, float]:
    for i in range(0, len(images), batch):
        metrics.update(images[i:i + batch].to(device).float() / 127.5 - 1)
    return metrics.compute(len(images))


def degradations(args: argparse.Namespace) -> None:
    for fid in args.fid:
        dm, metrics = setup(args.data, fid, args.overrides, args.device)
        images, labels = dm.labeled_images("val")
        images, labels = images[: args.n], labels[: args.n]
        name = metrics.fid_name
        t0 = time.perf_counter()
        floor = score(metrics, images, args.device)
        print(f"\n{args.data}, {name} (n={len(images)} held-out images vs the {metrics.reference_split} reference)")
        keys = [k for k in (name, "precision", "recall", "class_entropy", "class_tv") if k in floor]
        print("| degradation | strength | " + " | ".join(keys) + " | ordered |")
        print("|---" * (len(keys) + 3) + "|")
        print("| none (real floor) | | " + " | ".join(f"{floor[k]:.4g}" for k in keys) + " | |")
        failures = []
        for deg, (fn, strengths) in SUITE.items():
            prev = floor[name]
            for s in strengths:
                r = score(metrics, fn(images, labels, s, 0), args.device)
                ok = r[name] > prev
                failures += [] if ok else [f"{deg}({s})"]
                prev = r[name]
                print(f"| {deg} | {s:g} | " + " | ".join(f"{r[k]:.4g}" for k in keys) + f" | {'yes' if ok else 'NO'} |",
                      flush=True)
        print(f"{name}: {'all ordered' if not failures else 'NOT ordered: ' + ', '.join(failures)} "
              f"({time.perf_counter() - t0:.0f} s)")


def spearman(a: list[float], b: list[float]) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def sets(args: argparse.Namespace) -> None:
    files = [Path(f) for f in args.files]
    table: dict[str, dict[str, float]] = {f.stem: {} for f in files}
    names = []
    for fid in args.fid:
        dm, metrics = setup(args.data, fid, args.overrides, args.device)
        names.append(metrics.fid_name)
        for f in files:
            images = torch.from_numpy(np.load(f)["arr_0"]).permute(0, 3, 1, 2).contiguous()[: args.n]
            r = score(metrics, images, args.device)
            own = (metrics.fid_name, f"{metrics.fid_name}_n")  # the others are named after their feature network
            table[f.stem].update({k if k in own else f"{k}@{metrics.fid_name}": v for k, v in r.items()})
            print(f"{f.stem}: {r}", flush=True)
    cols = [c for c in next(iter(table.values())) if not c.endswith("_n")]
    print("\n| set | " + " | ".join(cols) + " |\n" + "|---" * (len(cols) + 1) + "|")
    for stem, row in table.items():
        print(f"| {stem} | " + " | ".join(f"{row[c]:.4g}" for c in cols) + " |")
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            rho = spearman([r[a] for r in table.values()], [r[b] for r in table.values()])
            print(f"Spearman rank correlation {a} vs {b} over {len(files)} sets: {rho:.3f}")


FIDS = ("classifier", "inception")  # conf/fid options


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    for cmd in ("degradations", "sets"):
        s = sub.add_parser(cmd)
        s.add_argument("--data", default="fashion_mnist")
        s.add_argument("--fid", nargs="+", default=["classifier"], help=f"one or more of {', '.join(FIDS)}")
        s.add_argument("--n", type=int, default=2000)
        s.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
        if cmd == "sets":
            s.add_argument("files", nargs="*", help="sample sets (.npz, key arr_0, N x H x W x C uint8)")
    return p


def parse(argv: list[str]) -> argparse.Namespace:
    """The arguments; `--fid classifier inception DIR/*.npz` works too: --fid takes every following word, so the
    .npz files it took are handed back to `files` (any other word that is no --fid option is an error)."""
    p = build_parser()
    overrides = argv[argv.index("--") + 1:] if "--" in argv else []
    args = p.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    args.overrides = overrides
    taken = [v for v in args.fid if v.endswith(".npz")]
    args.fid = [v for v in args.fid if not v.endswith(".npz")]
    unknown = sorted(set(args.fid) - set(FIDS))
    if unknown:
        p.error(f"--fid: unknown option(s) {unknown}; choose from {list(FIDS)}")
    if args.cmd == "sets":
        args.files = taken + args.files
        if not args.files:
            p.error("sets: give one or more .npz sample sets")
        missing = [f for f in args.files if not Path(f).is_file()]
        if missing:
            p.error(f"sets: no such file {missing[0]}")
    elif taken:
        p.error(f"degradations takes no sample sets, got {taken}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # names the Inception weights' source
    degradations(args) if args.cmd == "degradations" else sets(args)


if __name__ == "__main__":
    main()
