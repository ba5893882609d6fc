"""Sampling outside Lightning: `SamplingPipeline` (network + diffusion + sampler, `from_checkpoint`) and the
evaluation of a `SampleRequest` (draw, metrics, bits/dim) that training and eval.py share."""

from ddpm.pipeline.sampling import SampleRequest, Samples, SamplingPipeline, build_network

__all__ = ["SampleRequest", "Samples", "SamplingPipeline", "build_network"]
