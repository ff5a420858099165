"""Speed and memory benchmarks that print ratios: what choosing AsFT over plain LoRA costs.

``python -m benchmarks [--quick | --tiny] [--json]``; each topic module (step, penalty,
memory, extraction, generation) has ``run(mode, device, ...) -> dict`` with its ratio and the
shapes, dtype, device and repeat counts behind it. See benchmarks/RESULTS.md.
"""
