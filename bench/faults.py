"""Fault-injection table: run the fault suite (tests/faults) and print one row per scenario.

Each scenario starts from a running production layout on loopback (its own Postgres
cluster and Redis, moto S3, a uvicorn gateway, two Celery workers on the scripted
pipeline), submits ``--jobs`` tiny jobs, injects one fault and waits until every job is
terminal. Columns: jobs, succeeded, cancelled, failed, stuck (not terminal at the bound),
duplicate artifact rows, recovery seconds (fault to the last job terminal).

    .venv/bin/python bench/faults.py --jobs 10
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ("scenario", "jobs", "succeeded", "cancelled", "failed", "stuck", "duplicates", "recovery_s")


def table(rows: list[dict[str, object]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(str(row.get(c, "")) for c in COLUMNS) + " |" for row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=3, help="jobs per scenario (PXP_FAULT_JOBS)")
    parser.add_argument("-k", default=None, help="pytest -k expression selecting scenarios")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="pxp-fault-report-") as tmp:
        report = Path(tmp) / "report.jsonl"
        env = {**os.environ, "PXP_FAULT_JOBS": str(args.jobs), "PXP_FAULT_REPORT": str(report)}
        cmd = [sys.executable, "-m", "pytest", "tests/faults", "-m", "fault", "-q", "-p", "no:cacheprovider"]
        if args.k:
            cmd += ["-k", args.k]
        rc = subprocess.call(cmd, cwd=ROOT, env=env)
        rows = [json.loads(line) for line in report.read_text().splitlines()] if report.exists() else []
    print(f"\nFault scenarios, {args.jobs} job(s) per scenario (pytest exit {rc}):\n")
    print(table(rows))
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
