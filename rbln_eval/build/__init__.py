"""Building bundles: which family a model is (detection through the registry) and compiling it into the store."""
