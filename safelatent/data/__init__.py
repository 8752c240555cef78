"""Data: the safety micro-world generator and loaders for public safety benchmarks."""
