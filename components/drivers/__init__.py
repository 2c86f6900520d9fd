"""How the stages are run: Airflow's and Kubeflow's tasks, dvc.yaml generated from the stage table."""
