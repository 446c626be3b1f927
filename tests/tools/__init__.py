"""Development tools: the notebook checker and the built-book checker (not part of the package)."""
