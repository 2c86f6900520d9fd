-- Runs once, when the PostgreSQL volume is first initialised: MLflow gets its
-- own database beside Airflow's (POSTGRES_DB), because both keep their schema
-- version in an Alembic table of the same name.
CREATE DATABASE mlflow;
