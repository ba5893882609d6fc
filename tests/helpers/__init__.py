"""What several test files share: the exact denoiser of Gaussian data (`gaussian`), the entry points in-process
(`entry`), and the overrides that make a run smoke-size."""

# training-time evaluation reduced to a 4-image grid: no FID, no bits/dim, no chain figure, no progress bar
QUIET_EVAL = ["callbacks.sample_eval.n_grid=4", "callbacks.sample_eval.fid_samples=0",
              "callbacks.sample_eval.bpd_images=0", "callbacks.sample_eval.chain_frames=0",
              "callbacks.progress_bar.refresh_rate=0"]
# a short chain on the default network: what most end-to-end runs train
SMOKE = ["model=unet_tiny", "scheduler.num_timesteps=50", *QUIET_EVAL]
