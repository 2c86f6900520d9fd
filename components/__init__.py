"""The pipeline stages, importable without Airflow or Kubeflow."""
