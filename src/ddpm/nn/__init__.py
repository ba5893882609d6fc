"""Networks: the DDPM U-Net and the exponential moving average of its weights."""
