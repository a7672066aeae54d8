"""Benchmarks of storefleet (`make bench`): every figure side by side with its baseline."""
