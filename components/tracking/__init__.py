"""MLflow: stage runs, the registry, lineage, logged models, the night's parent run. The only code that imports mlflow."""
