"""Benchmarks: `protocol` is the paper's throughput and memory protocol (PF and DE workloads,
per-sample memory, TPM, the context sweep); `plots` draws its results. What they run on,
decoding random prompts and measuring its memory, is `photon.inference.workload`."""
