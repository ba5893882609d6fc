"""What is read from and written to disk: checkpoints (one reader), the old formats of checkpoints and configs
(one table), and diffusers' UNet2DModel / DDPMScheduler folders."""
