"""Benchmarks (memory, speed); each prints ratios measured side by side."""
