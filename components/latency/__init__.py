"""Latency models per device: the tree-structured regression (FastDeepIoT), fitting, baselines, figures."""
