"""Loaders, one per published data format, the windowed result they share, and its Great Expectations checks."""
