"""What several test files share: the exact denoiser of Gaussian data, and the overrides of a smoke-size run."""
