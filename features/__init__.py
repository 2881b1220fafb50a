"""Deal-history schema, validation and point-in-time features: pure functions over pandas frames."""
