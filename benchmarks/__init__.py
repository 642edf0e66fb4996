"""Benchmarks of SegResMamba against MONAI's networks and a SegMamba baseline: memory, time, parameters."""
