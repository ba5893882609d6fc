"""Every bad sampler, export and init_from input is one line naming the option, exit status 2, nothing written:
through eval.py's and train.py's task, in-process (tests/helpers/entry.py; the same run_task the scripts call)."""

from __future__ import annotations

import pytest

from tests.helpers import OLD_CKPT as CKPT
from tests.helpers import QUIET_EVAL
from tests.helpers.entry import run_entry

SAMPLER_OPTIONS = [
    (["sampler.num_steps=0"], "sampler.num_steps must be between 1 and T = 1000"),
    (["sampler.spacing=bogus"], "sampler.spacing must be one of"),
    (["sampler=edm", "sampler.s_churn=-1"], "sampler.s_churn must be >= 0, got -1"),
    (["sampler=edm", "sampler.rho=0"], "sampler.rho must be > 0"),
    (["sampler=edm", "sampler.sigma_max=-3"], "sampler.sigma_max must exceed the schedule's sigma_min"),
    (["sampler=edm", "sampler.s_tmin=2", "sampler.s_tmax=1"], "sampler.s_tmin must be <= sampler.s_tmax"),
    (["sampler=edm", "sampler.t_map=cubic"], "sampler.t_map must be one of"),
    (["sampler=ddim", "sampler.eta=-0.5"], "sampler.eta must be >= 0"),
    (["sampler=euler_ancestral", "sampler.s_noise=-1"], "sampler.s_noise must be >= 0"),
]


def one_line(finished) -> str:
    assert finished.returncode == 2 and "Traceback" not in finished.stderr, finished.stderr[-2000:]
    lines = [line for line in finished.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, finished.stderr[-2000:]
    return lines[0]


@pytest.mark.parametrize("args, message", SAMPLER_OPTIONS, ids=[" ".join(a) for a, _ in SAMPLER_OPTIONS])
def test_a_bad_sampler_option_in_eval_is_one_line(tmp_path, args, message):
    finished = run_entry("eval", [f"ckpt_path={CKPT}", *args, "logger=none", "metrics=[]"], tmp_path)
    assert message in one_line(finished)
    assert not list((tmp_path / "logs").rglob("samples.npz"))


@pytest.mark.parametrize("args, message", SAMPLER_OPTIONS[:3], ids=[" ".join(a) for a, _ in SAMPLER_OPTIONS[:3]])
def test_a_bad_sampler_option_in_train_is_one_line_before_training(tmp_path, args, message):
    finished = run_entry("train", [*args, *QUIET_EVAL, "logger=none", "trainer.max_steps=1"], tmp_path)
    assert message in one_line(finished)
    assert not list(tmp_path.rglob("*.ckpt")) and not list(tmp_path.rglob("config.yaml"))


def test_a_bad_evaluation_sampler_option_names_its_key(tmp_path):
    finished = run_entry("train", ["sampler@callbacks.sample_eval.sampler=edm", "callbacks.sample_eval.sampler.rho=0",
                                   "logger=none", "trainer.max_steps=1"], tmp_path)
    assert "callbacks.sample_eval.sampler.rho must be > 0" in one_line(finished)
    assert not list(tmp_path.rglob("*.ckpt")) and not list(tmp_path.rglob("config.yaml"))


def test_export_to_an_existing_file_is_one_line(tmp_path):
    target = tmp_path / "taken.txt"
    target.write_text("keep me\n")
    finished = run_entry("export", [f"ckpt_path={CKPT}", "format=diffusers", f"out={target}"], tmp_path)
    assert "is a file, not a folder" in one_line(finished) and target.read_text() == "keep me\n"


def test_init_from_a_missing_path_names_init_from(tmp_path):
    finished = run_entry("train", ["init_from=/nonexistent/weights.ckpt", "logger=none"], tmp_path)
    assert one_line(finished).startswith("error: init_from /nonexistent/weights.ckpt does not exist")
