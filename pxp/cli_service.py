"""``pxp serve | submit | status | download | keys``: the service side of the CLI.

These commands are thin: the gateway lives in ``service`` (installed with the
``service`` extra), the HTTP client in :mod:`pxp.client`. Nothing here imports torch.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

#: Commands whose argument parsing belongs to the service package itself.
PASSTHROUGH = {"serve": "service.embedded", "keys": "service.admin"}


def run_passthrough(command: str, argv: list[str]) -> int:
    import importlib

    try:
        module = importlib.import_module(PASSTHROUGH[command])
    except ImportError as exc:
        print(
            f"error: 'pxp {command}' needs the service extra: pip install 'pxp[service]' ({exc})",
            file=sys.stderr,
        )
        return 2
    return int(module.main(argv) or 0)


def _client_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", help="gateway URL (default $PXP_URL or http://127.0.0.1:8000)")
    p.add_argument("--api-key", help="API key (default $PXP_API_KEY or the embedded server's key file)")


def add_service_commands(sub: argparse._SubParsersAction) -> None:
    sub.add_parser(
        "serve", help="run the gateway (+ an embedded worker when nothing is configured)", add_help=False
    )
    sub.add_parser("keys", help="create / revoke / list API keys (admin)", add_help=False)

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
