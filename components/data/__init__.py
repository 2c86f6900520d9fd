"""Loaders, one per published data format, and the windowed result they share."""
