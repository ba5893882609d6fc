"""Docs that run: every shell command and Python block in README.md and docs/*.md, at smoke size.

Each `bash` block is read line by line (continuations joined, comments dropped, `&&` split). `python train.py`,
`eval.py` and `export.py` lines run in-process through the same task functions the scripts call, with a few steps and
samples; a line that needs a GPU, the network or a data set that is not on this machine is composed instead (every
override must exist and every option resolve); a `-m` sweep is expanded into its jobs; `python -c` runs as written;
a benchmark line is parsed by the script's own parser. Placeholders (`<run>`, `<ckpt>`) stand for a checkpoint
trained here. `pip`, `ruff` and `pytest` lines are what .ci/run runs, checked against it. A renamed option, a broken
command line or a stale flag in the docs fails here.
"""

from __future__ import annotations

import itertools
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import open_dict

from ddpm.tasks.config import compose as compose_config
from ddpm.tasks.wrapper import run_task
from tests.conftest import CONF, ROOT

pytestmark = pytest.mark.slow  # end-to-end: training, evaluation and export runs
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# data sets that run here at smoke size (the torchvision loaders read real files in test_data.py)
SMOKE_DATA = {"digits", "synthetic"}
GPU = re.compile(r"^(trainer=(gpu|ddp)|perf=gpu)$")


def blocks(path: Path, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", path.read_text(), re.S | re.M)


def shell_commands() -> list[tuple[str, list[str]]]:
    """(where, argv) for every command in every bash block of the docs."""
    found = []
    for path in DOCS:
        for block in blocks(path, "bash"):
            for line in block.replace("\\\n", " ").splitlines():
                argv = shlex.split(line, comments=True)
                while argv:
                    cut = argv.index("&&") if "&&" in argv else len(argv)
                    found.append((f"{path.name}: {' '.join(argv[:cut])}", argv[:cut]))
                    argv = argv[cut + 1:]
    return found


COMMANDS = shell_commands()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """One folder for all commands (an export's folder is the next line's checkpoint), a checkpoint trained here
    for the placeholders, and a shared feature-classifier cache."""
    from ddpm.tasks.train import train

    root = tmp_path_factory.mktemp("docs")
    train(train_config([], root / "run"))
    train(train_config(["model.num_classes=10", "objective.cond_drop_prob=0.1"], root / "conditional"))
    return root, root / "run" / "checkpoints" / "last.ckpt"


def checkpoint_for(argv: list[str], ckpt: Path) -> Path:
    """A line that asks for classes or guidance needs a class-conditional checkpoint (trained beside the other)."""
    conditional = any(a.startswith(("classes=", "guidance_scale=")) for a in argv)
    return ckpt.parent.parent.parent / "conditional" / "checkpoints" / "last.ckpt" if conditional else ckpt


def train_config(overrides: list[str], out: Path):
    """conf/train.yaml with `overrides`, made smoke-size: 2 steps, evaluation of a few samples, no logger (the
    chain keeps its 1000 steps: diffusers' DDPMPipeline, in the docs, samples 1000)."""
    cfg = compose_config("train", overrides, CONF)
    smoke = ["trainer.max_steps=2", "+trainer.limit_val_batches=1", "logger=none",
             f"paths.log_dir={out.parent / 'logs'}", f"paths.cache_dir={out.parent / 'cache'}"]
    if cfg.get("callbacks") and "sample_eval" in cfg.callbacks:
        smoke += ["callbacks.sample_eval.fid_samples=8", "callbacks.sample_eval.bpd_images=2",
                  "callbacks.sample_eval.n_grid=4", "callbacks.sample_eval.check_against_chain=false",
                  "callbacks.progress_bar.refresh_rate=0", "fid.classifier.steps=20"]
    cfg = compose_config("train", [*overrides, *smoke], CONF)
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
    return cfg


def substitute(argv: list[str], ckpt: Path) -> list[str]:
    """Placeholders -> the checkpoint trained here."""
    ckpt, out = checkpoint_for(argv, ckpt), []
    for a in argv:
        a = re.sub(r"logs/train/runs/<run>/checkpoints/last\.ckpt|<run>/checkpoints/last\.ckpt|<ckpt>", str(ckpt), a)
        out.append(a)
    return out


def runnable(overrides: list[str], task: str = "train") -> bool:
    """Runs here: no GPU, no network, smoke-size data, no earlier run (train's ckpt_path) or sweeper plugin."""
    data = next((o.split("=", 1)[1] for o in overrides if o.startswith("data=")), "digits")
    experiment = next((o.split("=", 1)[1] for o in overrides if o.startswith("experiment=")), None)
    needs = ("hparams_search=", "launcher=") + (("ckpt_path=",) if task == "train" else ())
    return (not any(GPU.match(o) or "hf:" in o or "<" in o for o in overrides) and data in SMOKE_DATA
            and experiment in (None, "ddpm_digits") and not any(o.startswith(needs) for o in overrides))


def sweep_jobs(overrides: list[str]) -> list[list[str]]:
    """A `-m` line's jobs: every combination of its comma-separated values."""
    options = [[f"{o.split('=', 1)[0]}={v}" for v in o.split("=", 1)[1].split(",")]
               if "=" in o and "," in o and "[" not in o else [o] for o in overrides]
    return [list(job) for job in itertools.product(*options)]


def run_train(argv: list[str], root: Path, ckpt: Path) -> None:
    from ddpm.tasks.train import train_and_score

    if "--help" in argv:
        out = subprocess.run([sys.executable, str(ROOT / "train.py"), "--help"], capture_output=True, text=True,
                             check=True).stdout
        assert "scheduler" in out and "sampler" in out
        return
    overrides = substitute([a for a in argv if a != "-m"], ckpt)
    for i, job in enumerate(sweep_jobs(overrides) if "-m" in argv else [overrides]):
        if not runnable(job):
            compose_config("train", [o for o in job if "<" not in o], CONF)  # every override exists and resolves
            continue
        cfg = train_config(job, root / f"train{len(list(root.iterdir()))}_{i}")
        assert run_task("train", train_and_score, cfg) is not None


def run_eval(argv: list[str], root: Path, ckpt: Path) -> None:
    from ddpm.tasks.evaluate import evaluate

    overrides = substitute(argv, ckpt)
    if not runnable(overrides, "eval"):
        compose_config("eval", [o for o in overrides if "<" not in o and not o.startswith("ckpt_path=")] +
                       ["ckpt_path=x"], CONF)
        return
    smoke = ["n_samples=8", "batch_size=8", "bpd_images=2", "logger=none", "fid.classifier.steps=20",
             f"paths.cache_dir={root / 'cache'}"]
    cfg = compose_config("eval", [*overrides, *smoke], CONF)
    with open_dict(cfg):
        cfg.paths.output_dir = str(root / f"eval{len(list(root.iterdir()))}")
    assert run_task("eval", evaluate, cfg)["n_samples"] == 8


def run_export(argv: list[str], root: Path, ckpt: Path) -> None:
    from ddpm.tasks.export import export

    cfg = compose_config("export", substitute(argv, ckpt), CONF)
    with open_dict(cfg):
        cfg.out = str(Path(cfg.out).resolve())  # relative to the doc's own folder, where the next lines read it
    assert run_task("export", export, cfg).is_dir()


def run_benchmark(argv: list[str], root: Path, ckpt: Path) -> None:
    """Parsed by the script's own parser (the runs themselves are GPU-sized); sample sets made here."""
    script = Path(argv[0])
    sys.path.insert(0, str(ROOT / "benchmarks"))
    module = __import__(script.stem)
    args = substitute(argv[1:], ckpt)
    if any(a.endswith("*.npz") for a in args):
        import numpy as np

        for name in ("a", "b"):
            np.savez(root / f"{name}.npz", np.zeros((4, 8, 8, 1), dtype=np.uint8))
        args = [a for a in args if not a.endswith("*.npz")] + [str(root / "a.npz"), str(root / "b.npz")]
    parsed = module.parse(args) if hasattr(module, "parse") else module.build_parser().parse_args(args)
    assert parsed is not None


@pytest.mark.parametrize("where, argv", COMMANDS, ids=[w for w, _ in COMMANDS])
def test_every_documented_command_runs(where, argv, workdir, monkeypatch):
    root, ckpt = workdir
    cwd = root / where.split(":")[0]  # each doc file's commands share a folder (an export, then its evaluation)
    cwd.mkdir(exist_ok=True)
    monkeypatch.chdir(cwd)
    program = argv[0]
    if program == "pip":  # an install: the extras it names exist
        import tomllib

        extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
        spec = argv[argv.index("-e") + 1]
        named = re.findall(r"\[(.*)\]", spec)
        assert spec.startswith(".") and all(e in extras for e in (named[0].split(",") if named else [])), where
        return
    if program in ("ruff", "pytest"):  # what .ci/run runs, or the fast tier (the marker exists)
        marker = argv[argv.index("-m") + 1] if "-m" in argv else None
        assert " ".join(argv) in (ROOT / ".ci" / "run").read_text() or marker == "not slow", where
        return
    assert program == "python", f"{where}: a command this test does not know how to run"
    script = argv[1]
    if script == "-c":
        subprocess.run([sys.executable, "-c", argv[2]], cwd=cwd, check=True, capture_output=True)
    elif script == "train.py":
        run_train(argv[2:], root, ckpt)
    elif script == "eval.py":
        run_eval(argv[2:], root, ckpt)
    elif script == "export.py":
        run_export(argv[2:], root, ckpt)
    elif script.startswith("benchmarks/"):
        run_benchmark(argv[1:], root, ckpt)
    else:
        pytest.fail(f"{where}: unknown script {script}")


def test_the_readme_test_command_is_what_ci_runs():
    readme = (ROOT / "README.md").read_text()
    command = 'pip install -e ".[test]" && ruff check . && pytest'
    assert command in readme and command in (ROOT / ".ci" / "run").read_text()


@pytest.mark.parametrize("path", DOCS, ids=[p.name for p in DOCS])
def test_every_python_block_runs(path, workdir, monkeypatch):
    root, ckpt = workdir
    monkeypatch.chdir(root)
    for block in blocks(path, "python"):
        code = substitute([block], ckpt)[0]
        subprocess.run([sys.executable, "-c", code], cwd=root, check=True, capture_output=True, timeout=300)
