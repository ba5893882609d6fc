"""The math of diffusion models, free of any framework: beta schedules, what the network's output means, the
forward and reverse processes, the variational bound, the training objective, classifier-free guidance, samplers
and image helpers. Every formula here is tested against an independent computation (docs/math.md)."""
