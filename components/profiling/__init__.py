"""What `profile` measures (items, sampler), how it runs them (runner, workers) and what it writes (table, plots)."""
