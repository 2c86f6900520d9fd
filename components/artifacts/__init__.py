"""Files a stage hands on: written atomically, sealed with checksums, verified when read."""
