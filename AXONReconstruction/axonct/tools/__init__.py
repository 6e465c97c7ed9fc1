"""Commands that use the engine: evaluation, benchmarks, the demo, DRR export."""
