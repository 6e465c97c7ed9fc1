"""Front ends: the `axon` command line, the reconstruct job and its torch-free protocol."""
