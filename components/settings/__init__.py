"""params.yaml's sections as pydantic models, one module per section (config.py loads, reference.py documents)."""
