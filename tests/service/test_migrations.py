"""Alembic is the only way the schema is made: it must match the models, go down and up
again, work on SQLite (embedded) and leave Optuna its own schema on Postgres."""

from __future__ import annotations

import secrets

import psycopg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text

from service.db.migrate import downgrade, upgrade
from service.db.models import Base
from service.db.session import make_engine
from tests.conftest import PG_ADMIN_DSN


def _diff(url: str) -> list:
    engine = make_engine(url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()
    return diff


def test_sqlite_upgrade_downgrade_upgrade(tmp_path):
    url = f"sqlite:///{tmp_path}/m.db"
    upgrade(url)
    assert _diff(url) == []
    downgrade(url, "base")
    engine = make_engine(url)
    assert set(inspect(engine).get_table_names()) == {"alembic_version"}
    engine.dispose()
    upgrade(url)
    assert _diff(url) == []


@pytest.mark.service
def test_postgres_schema_matches_the_models(pg_url):
    assert _diff(pg_url) == []


@pytest.mark.service
def test_postgres_downgrade_and_upgrade():
    name = f"pxp_mig_{secrets.token_hex(4)}"
    admin = psycopg.connect(PG_ADMIN_DSN, autocommit=True)
    admin.execute(f'CREATE DATABASE "{name}"')
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    try:
        upgrade(url)
        downgrade(url, "base")
        engine = make_engine(url)
        with engine.connect() as conn:
            assert (
                conn.execute(text("SELECT count(*) FROM pg_namespace WHERE nspname = 'optuna'")).scalar() == 0
            )
        assert set(inspect(engine).get_table_names()) == {"alembic_version"}
        engine.dispose()
        upgrade(url)
        assert _diff(url) == []
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.mark.service
def test_optuna_tables_live_in_their_own_schema(prod_settings, pg_engine):
    optuna = pytest.importorskip("optuna")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.RDBStorage(prod_settings.optuna_url)
    study = optuna.create_study(storage=storage, study_name=f"probe-{secrets.token_hex(3)}")
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=2)
    with pg_engine.connect() as conn:
        optuna_tables = set(inspect(conn).get_table_names(schema="optuna"))
        ours = conn.execute(text("SELECT version_num FROM public.alembic_version")).scalar()
    assert {"studies", "trials", "alembic_version"} <= optuna_tables
    assert ours == "0003"
    assert len(optuna.load_study(study_name=study.study_name, storage=storage).trials) == 2
    storage.remove_session()
    storage.engine.dispose()
