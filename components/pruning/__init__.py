"""Compression: DeepIoT's compressor-critic search, its costs (parameters, latency), slicing and fine-tuning."""
