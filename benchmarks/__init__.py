"""Benchmark harness of vit-fast: times every backend (eager, sdpa, torch.compile, vit_fast's Triton kernels, timm,
Hugging Face) on the same weights and inputs, and reports throughput, latency, TFLOP/s, MFU, memory and accuracy.

Entry points: `python -m benchmarks` (cli.py), `python -m benchmarks.report DIR` (report.py),
`python -m benchmarks.readme` (readme.py), `pytest benchmarks/` (kernel microbenchmarks),
`benchmarks/gpu_check.sh OUT` (tests + grid + microbenchmarks on a GPU machine); for a device session with a
10-minute limit per command, `benchmarks/gpu_steps.sh STEP` (headline.py, breakdown.py, grid slices; NOTES.md).
"""
