"""The soak test of tests/test_soak.py with the study and the MLflow runs in PostgreSQL (a private
server, tests/pg_server.py; skipped where none can start): a file of its own, so that the two run
on different pytest-xdist workers."""

from __future__ import annotations

import pytest
from test_soak import Stores, soak

pytestmark = pytest.mark.slow
pytest_plugins = ["pg_server"]  # the postgres_server fixture


def test_fused_parallel_sweep_on_postgres_survives_kill_9(tmp_path, teacher, postgres_server):
    suffix = tmp_path.name.replace("-", "_").lower()[-20:]
    soak(tmp_path, teacher, Stores(
        postgres_server.url(postgres_server.create_database(f"soak_mlflow_{suffix}"),
                            driver="psycopg"),
        postgres_server.url(postgres_server.create_database(f"soak_optuna_{suffix}"),
                            driver="psycopg")))
