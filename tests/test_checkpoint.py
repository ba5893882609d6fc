"""Anything that is not a checkpoint of ours, given as ckpt_path, is one line naming the path and what was expected."""

from __future__ import annotations

import pytest
import torch

from ddpm.errors import ConfigError
from ddpm.io.checkpoint import read_checkpoint
from tests.helpers.entry import run_entry


def _ours(path):
    torch.save({"state_dict": {"w": torch.zeros(64, 64)}, "hyper_parameters": {"model": {}}, "global_step": 3}, path)
    return path


@pytest.mark.parametrize("kind, expected", [
    ("missing", "does not exist"),
    ("folder", "is a folder"),
    ("text", "not a readable torch checkpoint"),
    ("truncated", "not a readable torch checkpoint"),
    ("foreign", "not a checkpoint of this framework (no state_dict, hyper_parameters, global_step)"),
])
def test_not_a_checkpoint_is_one_message(tmp_path, kind, expected):
    path = tmp_path / f"{kind}.ckpt"
    if kind == "folder":
        path.mkdir()
    elif kind == "text":
        path.write_text("this is not a checkpoint\n")
    elif kind == "truncated":
        data = _ours(tmp_path / "whole.ckpt").read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "foreign":
        torch.save({"weights": torch.zeros(3)}, path)
    with pytest.raises(ConfigError) as err:
        read_checkpoint(path)
    message = str(err.value)
    assert expected in message and str(path) in message and "\n" not in message
    assert "train.py" in message  # what was expected


def test_read_checkpoint_returns_the_contents(tmp_path):
    ckpt = read_checkpoint(_ours(tmp_path / "ok.ckpt"))
    assert ckpt["global_step"] == 3 and ckpt["state_dict"]["w"].shape == (64, 64)


def test_eval_py_with_a_text_file_is_one_message(tmp_path):
    """Tried as a new user would: before, torch's UnpicklingError traceback."""
    text = tmp_path / "notes.txt"
    text.write_text("hello\n")
    proc = run_entry("eval", [f"ckpt_path={text}", "logger=none"], tmp_path)
    assert proc.returncode == 2 and "not a readable torch checkpoint" in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
