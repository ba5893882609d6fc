"""Sweeps: a Hydra callback that writes one summary table of every job's final metrics.

Each job of `python train.py -m ...` writes `metrics.json` into its own output dir (also when it
fails, with the error). At the end of the sweep `SweepSummary` collects them, with each job's
overrides, into `<sweep dir>/summary.csv` and prints the table.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from ddpm.tasks.records import read_metrics

log = logging.getLogger(__name__)


def collect(sweep_dir: Path) -> list[dict[str, Any]]:
    """One row per job dir that holds a metrics.json: job number, swept values, status, metrics, overrides."""
    rows = []
    for job_dir in sorted((p for p in sweep_dir.iterdir() if p.is_dir()), key=lambda p: (len(p.name), p.name)):
        record = read_metrics(job_dir)
        if record is None:
            continue
        overrides_file = job_dir / ".hydra" / "overrides.yaml"
        overrides = OmegaConf.load(overrides_file) if overrides_file.is_file() else []
        rows.append({"job": job_dir.name, "overrides": list(map(str, overrides)), **record})
    common = set.intersection(*(set(r["overrides"]) for r in rows)) if len(rows) > 1 else set()
    for r in rows:  # "swept": what differs between the jobs; "overrides": everything the job was given
        r["swept"] = " ".join(o for o in r["overrides"] if o not in common)
        r["overrides"] = " ".join(r["overrides"])
    return rows


def format_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    def cell(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    widths = [max(len(c), *(len(cell(r.get(c, ""))) for r in rows)) for c in columns]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(cell(r.get(c, "")).ljust(w) for c, w in zip(columns, widths)) for r in rows]
    return "\n".join(lines)


class SweepSummary(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        summarize(Path(config.hydra.sweep.dir))


def summarize(sweep_dir: Path) -> None:
    """Write <sweep dir>/summary.csv and print the table (at the sweep's end, or when a stop signal ends it)."""
    rows = collect(sweep_dir) if sweep_dir.is_dir() else []
    if not rows:
        return
    metric_keys = sorted({k for r in rows for k in r} - {"job", "swept", "overrides", "status", "error"})
    columns = ["job", "swept", "status", *metric_keys, "overrides"]
    with open(sweep_dir / "summary.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[*columns, "error"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    shown = ["job", "swept", "status", *[k for k in metric_keys if k.startswith("val/")][:4]]
    print(f"\nSweep summary ({sweep_dir / 'summary.csv'}):\n{format_table(rows, shown)}")
    plot_against_compute(sweep_dir, rows)
    failed = [r["job"] for r in rows if r["status"] != "success"]
    if failed:
        log.warning("Sweep jobs not successful: %s (see each job's metrics.json and log)", ", ".join(failed))


QUALITY_KEYS = ("val/fid", "val/fd_resnet")  # the first one the jobs logged is plotted


def plot_against_compute(sweep_dir: Path, rows: list[dict[str, Any]]) -> Path | None:
    """<sweep dir>/quality_vs_seconds.png: each job's metric at every evaluation against its training seconds
    (evaluations left out), one line per job labelled by what it swept. None when no job evaluated a metric."""
    from ddpm.training.compute import read_evaluations

    curves = {r["swept"] or r["job"]: read_evaluations(sweep_dir / r["job"]) for r in rows}
    key = next((k for k in QUALITY_KEYS if any(k in e for c in curves.values() for e in c)), None)
    if key is None:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("the quality-against-compute plot needs matplotlib (pip install matplotlib); the table and "
                    "each job's evaluations.jsonl are written")
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, evals in curves.items():
        points = [(e["val/train_seconds"], e[key]) for e in evals if key in e]
        if points:
            ax.plot(*zip(*points), marker="o", label=label)
    ax.set(xlabel="training seconds (evaluations left out)", ylabel=key, yscale="log", title=sweep_dir.name)
    ax.legend(fontsize=7)
    path = sweep_dir / "quality_vs_seconds.png"
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    print(f"Quality against compute: {path}")
    return path
