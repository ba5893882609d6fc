"""How the math runs, never what it computes: the execution plan (compile, CUDA graphs, precision), the RNG
streams of every rank, and the process-wide stop request."""
