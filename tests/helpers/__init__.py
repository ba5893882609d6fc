"""What several test files share: the exact denoiser of Gaussian data (`gaussian`), the entry points in-process
(`entry`), the overrides that make a run smoke-size, and the checkpoint written before the layer move."""

from pathlib import Path

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
OLD_RUN = FIXTURES / "run_v0"  # a default run written by 008d7a2 (tests/fixtures/run_v0/README.md)
OLD_CKPT = OLD_RUN / "checkpoints" / "last.ckpt"

# training-time evaluation reduced to a 4-image grid: no FID, no bits/dim, no chain figure, no progress bar
QUIET_EVAL = ["callbacks.sample_eval.n_grid=4", "callbacks.sample_eval.fid_samples=0",
              "callbacks.sample_eval.bpd_images=0", "callbacks.sample_eval.chain_frames=0",
              "callbacks.progress_bar.refresh_rate=0"]
# a short chain on the default network: what most end-to-end runs train
SMOKE = ["model=unet_tiny", "scheduler.num_timesteps=50", *QUIET_EVAL]
