"""``pxp submit | status | download``: the client side of the service, in the CLI.

These commands are thin: the HTTP client is :mod:`pxp.client`. Nothing here imports
torch or the service. Running the service (``serve``) and managing API keys (``keys``)
are the service's own commands, ``pxp-service serve`` and ``pxp-service keys``
(:mod:`service.cli`, installed with the ``service`` extra); ``pxp serve`` and
``pxp keys`` hand over to that executable, never importing the service package.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

#: ``pxp <command>`` that hand over to ``pxp-service <command>``.
PASSTHROUGH = frozenset({"serve", "keys"})
SERVICE_COMMAND = "pxp-service"


def _service_executable() -> str | None:
    """``pxp-service`` beside this interpreter (a virtualenv), else on ``PATH``."""
    beside = Path(sys.executable).with_name(SERVICE_COMMAND)
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which(SERVICE_COMMAND)


def run_passthrough(command: str, argv: list[str]) -> int:
    """Replace this process with ``pxp-service <command> <argv>``."""
    exe = _service_executable()
    if exe is None:
        print(
            f"error: 'pxp {command}' is '{SERVICE_COMMAND} {command}', installed with the service extra: "
            "pip install 'pxp[service]'",
            file=sys.stderr,
        )
        return 2
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(exe, [exe, command, *argv])
    return 0  # not reached


def _client_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", help="gateway URL (default $PXP_URL or http://127.0.0.1:8000)")
    p.add_argument("--api-key", help="API key (default $PXP_API_KEY or the embedded server's key file)")


def add_service_commands(sub: argparse._SubParsersAction) -> None:
    sub.add_parser("serve", help="run the service: same as 'pxp-service serve'", add_help=False)
    sub.add_parser("keys", help="manage API keys: same as 'pxp-service keys'", add_help=False)

    p = sub.add_parser("submit", help="upload a model and data, submit a job")
    _client_options(p)
    p.add_argument("--spec", type=Path, help="JobSpec JSON file (model/data fields may be omitted)")
    p.add_argument("--model", help="architecture name")
    p.add_argument("--model-kwargs", default=None, help="constructor kwargs as JSON")
    p.add_argument("--weights", type=Path, help="checkpoint to upload")
    p.add_argument("--data", help="dataset archive/tensor file to upload, 'digits', or an allowed URI")
    p.add_argument("--idempotency-key")
    p.add_argument("--watch", action="store_true", help="show a live progress bar until the job ends")
    p.set_defaults(handler=cmd_submit)

    p = sub.add_parser("status", help="a job's state, or the latest jobs")
    _client_options(p)
    p.add_argument("job_id", nargs="?")
    p.add_argument("--watch", action="store_true", help="follow the job with a live progress bar")
    p.set_defaults(handler=cmd_status)

    p = sub.add_parser("download", help="download a job's artifacts (sha256-verified)")
    _client_options(p)
    p.add_argument("job_id")
    p.add_argument("--out", type=Path, default=Path("."))
    p.add_argument("--name", action="append", help="artifact name (repeatable; default: all)")
    p.set_defaults(handler=cmd_download)


def _print(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str))


def cmd_submit(args: argparse.Namespace) -> int:
    from pxp import client

    spec = json.loads(args.spec.read_text()) if args.spec else None
    kwargs = json.loads(args.model_kwargs) if args.model_kwargs else None
    job = client.submit(
        spec,
        model=args.weights,
        architecture=args.model,
        kwargs=kwargs,
        data=args.data,
        follow=args.watch,
        url=args.url,
        api_key=args.api_key,
        idempotency_key=args.idempotency_key,
        stream=sys.stderr,
    )
    _print(job)
    return 0 if job.get("status") != "failed" else 1


def cmd_status(args: argparse.Namespace) -> int:
    from pxp import client

    _print(
        client.status(args.job_id, follow=args.watch, url=args.url, api_key=args.api_key, stream=sys.stderr)
    )
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    from pxp import client

    paths = client.download(args.job_id, args.out, names=args.name, url=args.url, api_key=args.api_key)
    for name, path in sorted(paths.items()):
        print(f"{name:>14}: {path}")
    return 0
