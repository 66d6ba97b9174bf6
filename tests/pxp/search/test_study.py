from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from pxp.errors import InvalidSpecError
from pxp.search.study import (
    FINGERPRINT_ATTR,
    ROLE_ATTR,
    count_finished,
    default_storage_url,
    open_study,
    redact_url,
)
from pxp.spec import SearchSpec

SPEC = SearchSpec(trials=5)


def _open(url: str, name: str = "s", fingerprint: str = "fp", enqueue=None):  # type: ignore[no-untyped-def]
    return open_study(url=url, name=name, spec=SPEC, expected_fingerprint=fingerprint, enqueue=enqueue or [])


def test_default_storage_is_sqlite_beside_the_outputs(tmp_path: Path) -> None:
    url = default_storage_url(tmp_path / "job")
    assert url == f"sqlite:///{(tmp_path / 'job').resolve()}/search_study.db"
    study, _ = _open(url)
    assert (tmp_path / "job" / "search_study.db").exists()
    assert study.user_attrs[FINGERPRINT_ATTR] == "fp"


def test_the_default_sqlite_study_commits_through_a_write_ahead_log(tmp_path: Path) -> None:
    """WAL makes each of the search's many small commits one log sync instead of journal + file syncs."""
    import sqlite3

    url = default_storage_url(tmp_path)
    study, _ = _open(url)
    study.enqueue_trial({"x": 1.0})
    with sqlite3.connect(tmp_path / "search_study.db") as connection:
        mode = connection.execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    # The study is still readable by a fresh storage (the log is part of the database).
    again, _ = _open(url)
    assert len(again.get_trials(deepcopy=False)) == 1


def test_redact_url_hides_the_password_only() -> None:
    assert redact_url("postgresql://pxp:s3cret@db:5432/optuna") == "postgresql://pxp:***@db:5432/optuna"
    assert redact_url("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"
    assert redact_url(None) == "memory"


@pytest.mark.parametrize("url", ["study.db", "/tmp/study.db", "", "://nohost"])
def test_a_storage_that_is_not_a_url_is_an_invalid_spec(url: str) -> None:
    with pytest.raises(InvalidSpecError, match="not a database URL"):
        _open(url)


@pytest.mark.parametrize("url", ["mysql+nosuchdriver://u:pw@localhost/db", "nosuchdialect://u@h/db"])
def test_a_storage_sqlalchemy_cannot_load_is_an_invalid_spec(url: str) -> None:
    with pytest.raises(InvalidSpecError, match=r"unusable|driver") as info:
        _open(url)
    assert "pw" not in str(info.value)


@pytest.mark.parametrize("name", ["", "x" * 513, "tab\there"])
def test_bad_study_names_are_invalid_specs(tmp_path: Path, name: str) -> None:
    with pytest.raises(InvalidSpecError, match="study name"):
        _open(default_storage_url(tmp_path), name=name)


def test_resuming_with_another_fingerprint_is_refused(tmp_path: Path) -> None:
    url = default_storage_url(tmp_path)
    _open(url, fingerprint="a")
    with pytest.raises(InvalidSpecError, match="different search"):
        _open(url, fingerprint="b")


def test_a_foreign_study_with_trials_is_refused(tmp_path: Path) -> None:
    url = default_storage_url(tmp_path)
    foreign = optuna.create_study(storage=url, study_name="s", direction="maximize")
    foreign.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    with pytest.raises(InvalidSpecError, match="not from a pxp search"):
        _open(url)


def test_enqueued_configs_are_queued_once_in_order(tmp_path: Path) -> None:
    url = default_storage_url(tmp_path)
    enqueue = [({"rule_low": "epsilon"}, "default"), ({"rule_low": "zplus"}, "user")]
    _open(url, enqueue=enqueue)
    study, _ = _open(url, enqueue=enqueue)
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert [t.user_attrs[ROLE_ATTR] for t in waiting] == ["default", "user"]


def test_trials_left_running_are_failed_and_queued_again(tmp_path: Path) -> None:
    url = default_storage_url(tmp_path)
    study, _ = _open(url, enqueue=[({"rule_low": "gamma"}, "default")])
    interrupted = study.ask()  # the enqueued default, never told: what a killed process leaves behind
    interrupted.suggest_categorical("rule_low", ["epsilon", "gamma"])
    done = study.ask()
    done.suggest_categorical("rule_low", ["epsilon", "gamma"])
    study.tell(done, 0.5)

    study, requeued = _open(url)
    assert requeued == [interrupted.number]
    states = {t.number: t.state for t in study.trials}
    assert states == {
        interrupted.number: TrialState.FAIL,
        done.number: TrialState.COMPLETE,
        2: TrialState.WAITING,
    }
    retry = study.trials[2]
    assert retry.user_attrs == {"pxp_retry_of": interrupted.number, ROLE_ATTR: "default"}
    assert retry.system_attrs["fixed_params"] == {"rule_low": "gamma"}
    assert count_finished(study) == 1
    _, again = _open(url)
    assert again == []


@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_a_resumed_study_does_not_replay_earlier_random_draws(tmp_path: Path, sampler: str) -> None:
    url = default_storage_url(tmp_path)
    spec = SearchSpec(trials=20, sampler=sampler, seed=0)

    def draw(n: int) -> list[float]:
        study, _ = open_study(url=url, name="s", spec=spec, expected_fingerprint="fp", enqueue=[])
        values = []
        for _ in range(n):
            trial = study.ask()
            values.append(trial.suggest_float("x", 0.0, 1.0))
            study.tell(trial, 0.0)
        return values

    first = draw(2)
    assert not set(draw(2)) & set(first)


def test_a_database_servers_storage_is_built_once_per_process() -> None:
    """RDBStorage's constructor creates tables and checks versions: a worker pays it once, not per job."""
    from pxp.search.study import open_storage

    url = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
    assert open_storage(url) is open_storage(url)


def test_sqlite_storages_are_not_kept(tmp_path: Path) -> None:
    from pxp.search.study import open_storage

    url = f"sqlite:///{tmp_path}/s.db"
    assert open_storage(url) is not open_storage(url)
