"""Few-step samplers tuned on a checkpoint: FID against NFE for every sampler family, same seeds, two metrics.

    python benchmarks/sampler_sweep.py run CKPT --out DIR [--n 5000] [--grid full|quick] [--fid classifier inception]
                                       [--inception-weights FILE]
    python benchmarks/sampler_sweep.py plot DIR [DIR ...]            # DIR/table.md and DIR/fid_vs_nfe.png
    python benchmarks/sampler_sweep.py summarize MULTIRUN_DIR --out DIR   # the same from an eval.py multirun

`run` draws `n` samples per setting from the EMA weights (the same seeds for every setting), scores every set with
each metric of `--fid` (conf/fid options: `classifier` = the offline fd_resnet, `inception` = the standard FID)
and appends one JSON row per setting to DIR/rows.jsonl, then writes the table and the plot. The grid: the
1000-step chain (the reference), respaced ancestral, DDIM eta 0 / 1, DPM-Solver++(2M) ODE and SDE, EDM
deterministic and with churn, at 10-50 NFE. The same sweep as a Hydra multirun of eval.py (one job per setting;
slower: each job loads the checkpoint), summarised by `summarize`:

    python eval.py -m ckpt_path=CKPT 'metrics=[fid]' n_samples=5000 sampler=edm \\
        sampler.num_steps=8,13,18,25 sampler.s_churn=0,10,40 sampler.s_noise=1.0,1.007 sampler.rho=5,7
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from samplers import load, make_sampler, prepare_metrics, sync

FAST = (
    [("ancestral", {"num_steps": s}) for s in (50, 100)]
    + [("ddim", {"num_steps": s}) for s in (10, 20, 50)] + [("ddim", {"num_steps": 50, "eta": 1.0})]
    + [("dpm_solver", {"num_steps": s}) for s in (10, 20, 25)]
    + [("dpm_solver", {"num_steps": s, "sde": True}) for s in (10, 25, 50)]
    + [("dpm_solver", {"num_steps": 20, "spacing": "karras"})]
    + [("edm", {"num_steps": s}) for s in (5, 8, 13, 18, 25)]
    + [("edm", {"num_steps": s, "s_churn": c, "s_noise": 1.007}) for s in (13, 25) for c in (10, 40)]
    + [("edm", {"num_steps": 25, "s_churn": 40, "s_noise": 1.0})]
    + [("edm", {"num_steps": 18, "rho": r}) for r in (5, 10)])
GRIDS = {  # --slice A:B runs a part of a grid (a long sweep split over several jobs; rows.jsonl collects them)
    "reference": [("ancestral", {})],
    "fast": FAST,
    "full": [("ancestral", {})] + FAST,
    "quick": [("ancestral", {})] + [("ddim", {"num_steps": 50}), ("ddim", {"num_steps": 50, "eta": 1.0}),
                                    ("dpm_solver", {"num_steps": 20}), ("dpm_solver", {"num_steps": 25, "sde": True}),
                                    ("edm", {"num_steps": 13}), ("edm", {"num_steps": 25, "s_churn": 40})],
}


def family(name: str, overrides: dict) -> str:
    """The curve a setting belongs to in the plot."""
    if name == "ancestral":
        return "ancestral (1000 steps)" if "num_steps" not in overrides else "ancestral, respaced"
    if name == "ddim":
        return f"DDIM eta={overrides.get('eta', 0.0):g}"
    if name == "dpm_solver":
        return ("DPM-Solver++(2M) SDE" if overrides.get("sde") else "DPM-Solver++(2M)") + (
            ", karras" if overrides.get("spacing") == "karras" else "")
    if overrides.get("s_churn"):
        return f"EDM churn={overrides['s_churn']:g} s_noise={overrides.get('s_noise', 1.0):g}"
    return "EDM" + (f" rho={overrides['rho']:g}" if "rho" in overrides else "")


def run(ckpt: Path, out: Path, n: int, batch: int, seed: int, grid: str, fids: list[str], weights: str | None,
        part: slice = slice(None)) -> None:
    from ddpm.pipeline import SampleRequest

    out.mkdir(parents=True, exist_ok=True)
    extra = (f"fid.weights_path={weights}",) if weights else ()
    pipeline, dm, first = load(ckpt, fid=fids[0], fid_overrides=extra if fids[0] == "inception" else ())
    metrics = [first] + [prepare_metrics(ckpt, dm, pipeline.device, f, extra if f == "inception" else ())
                         for f in fids[1:]]
    T = pipeline.diffusion.num_timesteps
    with open(out / "rows.jsonl", "a") as rows:
        for name, overrides in GRIDS[grid][part]:
            overrides = {k: min(v, T) if k == "num_steps" and name != "edm" else v for k, v in overrides.items()}
            job = pipeline.with_sampler(make_sampler(pipeline, name, overrides))
            job.sample(min(batch, n), seed=seed)  # untimed: compilation and graph capture
            sync()
            start = time.perf_counter()
            samples = job.draw(SampleRequest(n=n, batch_size=batch, seed=seed, keep=n), to_eval=dm.to_eval)
            sync()
            seconds = time.perf_counter() - start
            images = samples.images.to(pipeline.device).float() / 127.5 - 1
            row = {"ckpt": str(ckpt), "setting": name, "overrides": overrides, "family": family(name, overrides),
                   "sampler": job.sampler.describe(), "nfe": job.sampler.nfe, "n": samples.n_total,
                   "seconds": round(seconds, 2)}
            for m in metrics:
                for i in range(0, len(images), batch):
                    m.update(images[i:i + batch])
                result = m.compute(samples.n_total)
                row[m.fid_name] = round(result[m.fid_name], 4)
                for key in ("precision", "recall", "class_entropy"):
                    if key in result:
                        row[f"{m.fid_name}_{key}"] = round(result[key], 4)
            rows.write(json.dumps(row) + "\n")
            rows.flush()
            print(json.dumps(row), flush=True)
    plot([out], out)


def read_rows(dirs: list[Path]) -> list[dict]:
    return [json.loads(line) for d in dirs for line in (d / "rows.jsonl").read_text().splitlines() if line.strip()]


def plot(dirs: list[Path], out: Path) -> None:
    """table.md (every setting, its gap to the 1000-step chain per metric) and fid_vs_nfe.png (one curve per
    sampler family and metric; the 1000-step chain as a horizontal line)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_rows(dirs)
    names = [k for k in ("fid", "fd_resnet") if any(k in r for r in rows)]
    ref = next((r for r in rows if r["family"] == "ancestral (1000 steps)"), None)
    if ref is None:
        raise SystemExit("no 1000-step chain row yet (--grid reference): nothing to compare with")
    lines = ["| sampler | NFE | " + " | ".join(f"{k} (n={ref['n']}) | vs 1000 steps" for k in names) + " | s |",
             "|---|---|" + "---|---|" * len(names) + "---|"]
    for r in sorted(rows, key=lambda r: (r["family"], r["nfe"])):
        cells = " | ".join(f"{r[k]:.3f} | {r[k] / ref[k] - 1:+.1%}" for k in names)
        lines.append(f"| {r['sampler']} | {r['nfe']} | {cells} | {r['seconds']} |")
    (out / "table.md").write_text("\n".join(lines) + "\n")
    fig, axes = plt.subplots(1, len(names), figsize=(7 * len(names), 5), squeeze=False)
    for ax, key in zip(axes[0], names):
        families = sorted({r["family"] for r in rows} - {"ancestral (1000 steps)"})
        for i, fam in enumerate(families):
            pts = sorted((r["nfe"], r[key]) for r in rows if r["family"] == fam and r["nfe"] <= 100)
            if pts:
                ax.plot(*zip(*pts), marker="os^Dv"[i % 5], color=plt.cm.tab20(i % 20), label=fam)
        ax.axhline(ref[key], color="k", ls="--", label=f"ancestral, 1000 NFE ({ref[key]:.2f})")
        ax.set(xlabel="network evaluations per sample (NFE)", ylabel=key, yscale="log", title=f"{key} vs NFE")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "fid_vs_nfe.png", dpi=120)
    print("\n".join(lines))


def summarize(multirun: Path, out: Path) -> None:
    """rows.jsonl from the metrics.json of every job of an eval.py multirun, then the table and the plot."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "rows.jsonl", "w") as rows:
        for path in sorted(multirun.glob("*/metrics.json")):
            m = json.loads(path.read_text())
            overrides = {k: v for k, v in (o.split("=", 1) for o in _job_overrides(path.parent))
                         if k.startswith("sampler.")}
            name = m["sampler"].split("(")[0].replace("edm_heun", "edm").replace("dpm_solver++2m_sde", "dpm_solver")
            name = name.replace("dpm_solver++2m", "dpm_solver")
            short = {k.split(".", 1)[1]: json.loads(v) if v[:1].isdigit() else v for k, v in overrides.items()}
            row = {"setting": name, "overrides": short, "family": family(name, short), "sampler": m["sampler"],
                   "nfe": m["nfe"], "n": m["n_samples"], "seconds": m["sampling_seconds"]}
            row.update({k: m[k] for k in ("fid", "fd_resnet") if k in m})
            rows.write(json.dumps(row) + "\n")
    plot([out], out)


def _job_overrides(job_dir: Path) -> list[str]:
    import yaml

    path = job_dir / ".hydra" / "overrides.yaml"
    return yaml.safe_load(path.read_text()) if path.is_file() else []


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="what", required=True)
    r = sub.add_parser("run")
    r.add_argument("ckpt", type=Path)
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--n", type=int, default=5000)
    r.add_argument("--batch", type=int, default=1000)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--grid", choices=sorted(GRIDS), default="full")
    r.add_argument("--fid", nargs="+", default=["classifier"], help="conf/fid options: classifier, inception")
    r.add_argument("--inception-weights", default=None, help="fid.weights_path for fid=inception")
    r.add_argument("--slice", default=":", help="A:B, the settings A..B-1 of the grid")
    pl = sub.add_parser("plot")
    pl.add_argument("dirs", type=Path, nargs="+")
    s = sub.add_parser("summarize")
    s.add_argument("multirun", type=Path)
    s.add_argument("--out", type=Path, required=True)
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.what == "run":
        part = slice(*[int(v) if v else None for v in args.slice.split(":")])
        run(args.ckpt, args.out, args.n, args.batch, args.seed, args.grid, args.fid, args.inception_weights, part)
    elif args.what == "plot":
        plot(args.dirs, args.dirs[0])
    else:
        summarize(args.multirun, args.out)


if __name__ == "__main__":
    torch.backends.cuda.matmul.allow_tf32 = False  # FID features in full fp32
    main()
