-- Databases for the MLflow server (runs, and basic-auth users); the Optuna study uses POSTGRES_DB.
CREATE DATABASE mlflow;
CREATE DATABASE mlflow_auth;
