"""train.py, eval.py and export.py in-process: composed as the script composes them and run through the same
`run_task`, with the exit code, stdout and stderr (log records included) captured as a subprocess would show them.
For the checks where a new interpreter proves nothing more; Hydra's own command-line handling keeps its CLI tests."""

from __future__ import annotations

import io
import logging
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

from omegaconf import open_dict

from ddpm.tasks.config import compose
from tests.conftest import CONF


@dataclass
class Finished:
    returncode: int
    stdout: str
    stderr: str


def task_function(task: str):
    if task == "train":
        from ddpm.tasks.train import train_and_score

        return train_and_score
    if task == "eval":
        from ddpm.tasks.evaluate import evaluate

        return evaluate
    from ddpm.tasks.export import export

    return export


def run_entry(task: str, overrides: list[str], tmp_path: Path) -> Finished:
    """`python <task>.py paths.log_dir=<tmp_path>/logs <overrides>`, in this process; each call gets the next run
    folder under logs/<task>/runs/ (named in the order of the calls, as the scripts' timestamps are)."""
    from ddpm.tasks.wrapper import run_task

    cfg = compose(task, [f"paths.log_dir={tmp_path / 'logs'}", *overrides], CONF)
    runs = tmp_path / "logs" / task / "runs"
    count = len(list(runs.iterdir())) if runs.is_dir() else 0
    with open_dict(cfg):
        cfg.paths.output_dir = str(runs / f"run{count:03d}")
    out, err = io.StringIO(), io.StringIO()
    handler = logging.StreamHandler(err)
    root, ours = logging.getLogger(), logging.getLogger("ddpm")  # INFO from our loggers, whatever ran before
    root.addHandler(handler)
    levels = root.level, ours.level
    root.setLevel(logging.INFO)
    ours.setLevel(logging.INFO)
    code = 0
    try:
        with redirect_stdout(out), redirect_stderr(err):
            try:
                run_task(task, task_function(task), cfg)
            except SystemExit as exit_:
                code = int(exit_.code or 0)
    finally:
        root.removeHandler(handler)
        root.setLevel(levels[0])
        ours.setLevel(levels[1])
    return Finished(code, out.getvalue(), err.getvalue())
