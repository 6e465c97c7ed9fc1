"""Training data: the cache schema, `axon prepare`, synthetic anatomy and the batch datasets."""
