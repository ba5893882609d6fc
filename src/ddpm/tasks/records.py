"""metrics.json: the one record of a run's outcome (train.py, eval.py), read by the sweep summary and export.py's
model card. `status` is success, failed (with the error) or interrupted; the metrics follow as numbers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.json"


def write_metrics(output_dir: Path, metrics: dict[str, Any], status: str = "success",
                  error: str | None = None) -> Path:
    """`output_dir/metrics.json` with the status first (tensors and numpy numbers written as floats)."""
    path = Path(output_dir) / METRICS_FILE
    record = {"status": status, **({"error": error} if error else {}), **metrics}
    path.write_text(json.dumps(record, indent=2, default=float))
    return path


def read_metrics(run_dir: Path) -> dict[str, Any] | None:
    """A run's record, or None where it wrote none (a run still going, or killed)."""
    path = Path(run_dir) / METRICS_FILE
    return json.loads(path.read_text()) if path.is_file() else None
