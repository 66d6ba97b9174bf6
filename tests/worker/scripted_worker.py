"""A Celery worker whose jobs run the scripted pipeline (tests/worker/scripted_pipeline.py).

``python -m tests.worker.scripted_worker -Q <queue> ...`` takes the arguments of
``celery worker``. It installs the scripted pipeline through
:func:`worker.jobbody.set_pipeline` before the worker starts; the prefork children
inherit it. Production runs ``celery -A worker.celery_app worker`` with the real one.
"""

from __future__ import annotations

import sys

from tests.worker import scripted_pipeline
from worker.jobbody import set_pipeline


def main(argv: list[str]) -> None:
    set_pipeline(scripted_pipeline.run)
    from worker.celery_app import app

    app.worker_main(["worker", *argv])


if __name__ == "__main__":
    main(sys.argv[1:])
