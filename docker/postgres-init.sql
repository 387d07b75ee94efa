-- Runs once, when the PostgreSQL volume is created: basic auth keeps its users in a database of its own.
CREATE DATABASE mlflow_auth;
