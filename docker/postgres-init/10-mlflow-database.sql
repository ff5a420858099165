-- One Postgres for both servers: POSTGRES_DB is Prefect's database, this adds MLflow's.
CREATE DATABASE mlflow;
