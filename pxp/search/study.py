"""Opening, resuming and budgeting an Optuna study.

One study belongs to one search: its fingerprint (search space, rates, layers,
model weights, reference and search data) is stored with it, and resuming it
with anything else is refused, because trial values measured on different
inputs cannot be compared. A study is driven by one process at a time, so
trials found RUNNING when it is opened were left by a killed process: they are
marked failed and their parameters queued again, and the budget counts only
finished trials, so the total budget is still honoured.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import threading
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from pxp.errors import InvalidSpecError
from pxp.spec import SearchSpec

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
FINGERPRINT_ATTR = "pxp_fingerprint"
ROLE_ATTR = "pxp_role"
DEFAULT_STORAGE_FILE = "search_study.db"
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")
_MAX_NAME = 512
_RESUME_SALT = 1_000_003


def default_storage_url(out_dir: str | Path) -> str:
    """The embedded default: a SQLite file beside the job's outputs."""
    return f"sqlite:///{(Path(out_dir).resolve() / DEFAULT_STORAGE_FILE).as_posix()}"


def redact_url(url: str | None) -> str:
    """The storage URL with any password replaced, safe to report."""
    if url is None:
        return "memory"
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def tensor_digest(tensors: Iterable[tuple[str, torch.Tensor]]) -> str:
    """sha256 over names, dtypes, shapes and raw bytes."""
    digest = hashlib.sha256()
    for name, tensor in tensors:
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def fingerprint(parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def make_sampler(spec: SearchSpec, trials_so_far: int = 0) -> optuna.samplers.BaseSampler:
    """Seeded TPE (multivariate, grouped: the rule parameters are conditional) or random sampling.

    TPE's random start-up trials are few (a quarter of the budget, 3 to 10); the
    enqueued default configuration counts among them. A resumed study reseeds
    with its trial count mixed in: the same seed would replay the random draws
    the interrupted run already tried.
    """
    seed = (spec.seed + _RESUME_SALT * trials_so_far) % 2**32
    if spec.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(
            seed=seed, n_startup_trials=startup_trials(spec.trials), multivariate=True, group=True
        )


def startup_trials(budget: int) -> int:
    return max(3, min(10, budget // 4))


def make_pruner(spec: SearchSpec) -> optuna.pruners.BasePruner:
    """Median pruning after three points of the coarse-to-fine curve (its ends and middle)."""
    if not spec.median_pruning:
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=startup_trials(spec.trials), n_warmup_steps=2)


_SERVER_STORAGES: dict[str, optuna.storages.BaseStorage] = {}
_SERVER_STORAGES_LOCK = threading.Lock()


def open_storage(url: str | None) -> optuna.storages.BaseStorage:
    """The Optuna storage for ``url``; a database server's is built once per process.

    ``RDBStorage``'s constructor creates tables and checks the schema version, so a
    worker that builds one per job pays that on every job. SQLite files are per job
    directory, so they are not kept (that would hold one engine per finished job).
    """
    if url is None:
        return optuna.storages.InMemoryStorage()
    if url.startswith("sqlite"):
        return _new_storage(url)
    with _SERVER_STORAGES_LOCK:
        if url not in _SERVER_STORAGES:
            _SERVER_STORAGES[url] = _new_storage(url)
        return _SERVER_STORAGES[url]


def use_write_ahead_log(path: Path) -> None:
    """Switch the SQLite file at ``path`` (created if missing) to write-ahead logging.

    A search commits to its study after every rate of every trial (Optuna writes each
    intermediate value in its own transaction). In SQLite's default rollback-journal
    mode every commit syncs the journal and the database file: about 15 ms each on
    this project's machines, some 20 s of a 30-trial ResNet-18 search. In WAL mode a
    commit appends to the log and syncs it once (about 3 ms), with the same durability
    (``synchronous`` stays at its default, FULL) and readers that never block the writer.
    The mode is stored in the file, so every later connection (Optuna's, a dashboard's)
    uses it. A file that cannot be switched (read-only, or a filesystem without the
    shared memory WAL needs) is left as it is: Optuna reports any real problem itself.
    """
    import sqlite3

    try:
        with contextlib.closing(sqlite3.connect(path, timeout=30)) as connection:
            connection.execute("PRAGMA journal_mode=WAL")
    except sqlite3.Error:
        pass


def _new_storage(url: str) -> optuna.storages.BaseStorage:
    if not _URL.match(url):
        raise InvalidSpecError(
            f"search storage {redact_url(url)!r} is not a database URL "
            "(e.g. sqlite:////abs/path/study.db or postgresql://user@host/db)"
        )
    if url.startswith("sqlite:///"):
        path = url.removeprefix("sqlite:///")
        if path and path != ":memory:" and "?" not in path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            use_write_ahead_log(Path(path))
    try:
        return optuna.storages.RDBStorage(url)
    except ImportError as exc:
        raise InvalidSpecError(f"search storage {redact_url(url)!r} needs a database driver: {exc}") from exc
    except Exception as exc:
        if _is_url_error(exc):
            raise InvalidSpecError(f"search storage {redact_url(url)!r} is unusable: {exc}") from exc
        raise


def _is_url_error(exc: BaseException) -> bool:
    """SQLAlchemy's ArgumentError family (malformed URL, unknown dialect or driver).

    Matched by name: pxp does not import SQLAlchemy (it is Optuna's dependency, not ours).
    """
    return any(
        c.__name__ == "ArgumentError" and c.__module__.startswith("sqlalchemy") for c in type(exc).__mro__
    )


def check_study_name(name: str) -> str:
    if not name or len(name) > _MAX_NAME or not name.isprintable():
        raise InvalidSpecError(f"study name must be 1–{_MAX_NAME} printable characters, got {name!r}")
    return name


def open_study(
    *,
    url: str | None,
    name: str,
    spec: SearchSpec,
    expected_fingerprint: str,
    enqueue: list[tuple[dict[str, Any], str]],
) -> tuple[optuna.Study, list[int]]:
    """Create or load the study; returns it and the numbers of interrupted trials queued again.

    ``enqueue`` (params, role) pairs are queued, in order, only when the study is new.
    ``spec.study_user_attrs`` are (re)set on the study every time it is opened.
    """
    storage = open_storage(url)
    study = optuna.create_study(
        storage=storage,
        sampler=make_sampler(spec),
        pruner=make_pruner(spec),
        study_name=check_study_name(name),
        direction="maximize",
        load_if_exists=True,
    )
    if study.direction != optuna.study.StudyDirection.MAXIMIZE:
        raise InvalidSpecError(f"study {name!r} exists and minimises; pxp studies maximise A_PR")
    stored = study.user_attrs.get(FINGERPRINT_ATTR)
    trials = study.get_trials(deepcopy=False)
    if stored is None and trials:
        raise InvalidSpecError(f"study {name!r} already holds trials that are not from a pxp search")
    if stored is not None and stored != expected_fingerprint:
        raise InvalidSpecError(
            f"study {name!r} in {redact_url(url)} was created for a different search (model, data, layers, "
            "rates or search space changed); use another study name or storage"
        )
    for key, value in spec.study_user_attrs.items():
        if key != FINGERPRINT_ATTR and study.user_attrs.get(key) != value:
            study.set_user_attr(key, value)
    if stored is None:
        study.set_user_attr(FINGERPRINT_ATTR, expected_fingerprint)
        for params, role in enqueue:
            study.enqueue_trial(params, user_attrs={ROLE_ATTR: role})
    else:
        study.sampler = make_sampler(spec, len(trials))
    return study, requeue_interrupted(study, storage)


def requeue_interrupted(study: optuna.Study, storage: optuna.storages.BaseStorage) -> list[int]:
    """Mark RUNNING trials (left by a killed process) failed and queue their parameters again."""
    study_id = storage.get_study_id_from_name(study.study_name)
    requeued = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        storage.set_trial_user_attr(trial_id, "pxp_interrupted", True)
        storage.set_trial_state_values(trial_id, state=TrialState.FAIL)
        attrs = {k: v for k, v in trial.user_attrs.items() if k == ROLE_ATTR}
        study.enqueue_trial(dict(trial.params), user_attrs={**attrs, "pxp_retry_of": trial.number})
        requeued.append(trial.number)
    return requeued


def count_finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def seconds_spent(study: optuna.Study) -> float:
    """Wall-clock seconds of every trial that ended, so a resumed search does not get a fresh budget."""
    total = 0.0
    for trial in study.get_trials(deepcopy=False):
        if trial.duration is not None:
            total += trial.duration.total_seconds()
    return total


def complete_trials(study: optuna.Study) -> list[FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
