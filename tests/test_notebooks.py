"""The notebooks run top to bottom (on tiny settings), so they never rot."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from ddpm.tasks.train import train
from tests.conftest import ROOT, compose

pytestmark = pytest.mark.slow  # end-to-end: executed notebooks

NOTEBOOKS = ROOT / "notebooks"


def run(name: str, parameters: str) -> nbformat.NotebookNode:
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    param_cell = next(c for c in nb.cells if c.cell_type == "code" and c.source.startswith("# Parameters"))
    param_cell.source = "# Parameters (set by the test)\n" + parameters
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    return nb


def outputs(nb: nbformat.NotebookNode) -> str:
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)


def test_schedules_notebook():
    nb = run("01_schedules_and_forward_process.ipynb", "T = 100\nDATA = 'digits'\nN_IMAGES = 3")
    text = outputs(nb)
    assert "linear" in text and "cosine" in text and "alpha_bar_0" in text
    assert "DPM-Solver++(2M)" in text and "at NFE" in text  # the exact-score sampler comparison


@pytest.mark.slow
@pytest.mark.parametrize("num_classes", [None, 10])
def test_sampling_notebook(tmp_path, num_classes):
    cfg = compose(["model=unet_tiny", "scheduler.num_timesteps=20", "logger=none", "callbacks=default",
                   "callbacks.sample_eval.fid_samples=0", "callbacks.sample_eval.bpd_images=0",
                   "callbacks.sample_eval.n_grid=4", "trainer.max_steps=3",
                   f"model.num_classes={'null' if num_classes is None else num_classes}"], output_dir=tmp_path)
    train(cfg)
    ckpt = Path(tmp_path) / "checkpoints" / "last.ckpt"
    nb = run("02_sampling_from_a_checkpoint.ipynb", f"CKPT = {str(ckpt)!r}\nN_SAMPLES = 8\nSEED = 0\n"
             "N_COMPARE = 4\nGUIDANCE = [0.0, 2.0]")
    text = outputs(nb)
    assert "T = 20" in text and "samples in [-1, 1]" in text
    assert "dpm_solver(DPM-Solver++(2M), S=20" in text and "ddim(S=20, eta=1" in text
    assert "NFE    20" in text  # capped at T
    assert ("10 classes, guidance scales [0.0, 2.0]" in text) == (num_classes == 10)
