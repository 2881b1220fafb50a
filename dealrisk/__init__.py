"""The `dealrisk` command line: the wiring layer that may import every other package."""
