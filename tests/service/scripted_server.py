"""``pxp-service serve`` with the scripted pipeline in its embedded workers.

``python -m tests.service.scripted_server --host ... --port ...`` takes the arguments of
:func:`service.embedded.main` and passes ``tests.worker.scripted_pipeline.run`` to it
as an argument (the spawned worker processes get it by reference).
"""

from __future__ import annotations

import sys

from service.embedded import main
from tests.worker import scripted_pipeline

if __name__ == "__main__":
    main(sys.argv[1:], pipeline=scripted_pipeline.run)
