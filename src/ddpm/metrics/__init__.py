"""Sample quality: FID / KID / IS with the standard Inception or the offline feature classifier, precision /
recall and class balance from the same features, and the known-bad degradations that test the yardstick."""

from ddpm.metrics.sample_metrics import SampleMetrics

__all__ = ["SampleMetrics"]
