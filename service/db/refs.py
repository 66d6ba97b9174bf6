"""References from a job spec to stored objects: ``model:<id>`` and ``dataset:<id>``.

The gateway writes and checks them (:mod:`service.api.job_requests`); the worker resolves
them to files (:mod:`worker.inputs`). Both use these helpers, so the two cannot drift.
"""

from __future__ import annotations

MODEL_REF = "model:"
DATASET_REF = "dataset:"


def model_ref(model_id: str) -> str:
    return f"{MODEL_REF}{model_id}"


def dataset_ref(dataset_id: str) -> str:
    return f"{DATASET_REF}{dataset_id}"


def parse_ref(value: str, prefix: str) -> str | None:
    """The object id of ``value`` if it is a reference with ``prefix`` (``MODEL_REF`` or
    ``DATASET_REF``), else ``None``."""
    return value[len(prefix) :] if value.startswith(prefix) else None


def is_uri(value: str) -> bool:
    """Whether ``value`` is a URI (``scheme://...``) rather than a reference or a name."""
    return "://" in value
