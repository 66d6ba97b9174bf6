"""``make demo``: the main job, end to end, on the embedded default.

Starts ``pxp-service serve`` (SQLite, a local artifact directory, a worker process: no
servers to install), submits a digits job with every criterion through the
Python client, follows it with a live progress bar, downloads the compressed
checkpoint, reloads it without pickle, checks its accuracy on the held-out test
split against what the job reported, prints the results table, stops the server.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pxp.client import LocalServer, PxpClient, watch
from pxp.spec import CRITERIA, AttributionSpec, JobResult, JobSpec, ModelSpec


def demo_spec(architecture: str) -> JobSpec:
    return JobSpec(
        model=ModelSpec(architecture=architecture),
        criteria=[AttributionSpec(criterion=name) for name in CRITERIA],
    )


def reloaded_accuracy(out_dir: Path, spec: JobSpec) -> float:
    """Accuracy of the downloaded checkpoint on the job's own test split, recomputed here."""
    from pxp.data import load_data, make_splits
    from pxp.models import get_architecture
    from pxp.models.compressed import load_compressed
    from pxp.pruning.curve import accuracy

    info = get_architecture(spec.model.architecture)
    data = load_data(spec.data, image_size=info.image_size, channels=info.input_channels)
    test = make_splits(data.labels, spec.splits).test
    model = load_compressed(out_dir)
    return accuracy(model, data.normalized(test, info.mean, info.std), data.labels[test])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pxp.demo", description=__doc__)
    parser.add_argument(
        "--model", default="digits_vgg", help="a digits zoo model (trained and cached on first use)"
    )
    parser.add_argument(
        "--data-dir", type=Path, default=Path(".pxp-demo"), help="the embedded server's state"
    )
    parser.add_argument(
        "--out", type=Path, default=Path("demo-out"), help="where the artifacts are downloaded"
    )
    args = parser.parse_args(argv)

    from pxp.report import results_table

    spec = demo_spec(args.model)
    print(f"pxp demo: starting the embedded server (state in {args.data_dir}/) ...", flush=True)
    with LocalServer(args.data_dir) as server, PxpClient(server.url, server.api_key) as client:
        print(f"pxp demo: server ready at {server.url}; submitting a {args.model} job on digits", flush=True)
        job = client.submit(spec.model_dump(mode="json", exclude_none=True))
        job = watch(client, job["id"], stream=sys.stderr)
        if job["status"] != "succeeded":
            print(f"pxp demo: job {job['status']}: {json.dumps(job.get('error'))}", file=sys.stderr)
            return 1
        paths = client.download_all(job["id"], args.out)
    result = JobResult.model_validate_json((args.out / "results.json").read_text())
    print()
    print(f"{args.model} on digits: {result.split_sizes} samples (reference / search / test)")
    print(results_table(result))
    summary = result.compression or {}
    measured = reloaded_accuracy(args.out, spec)
    print()
    print(
        f"exported {result.chosen_label} at rate {result.chosen_rate:.2f} (chosen on the search split): "
        f"{100 * summary.get('params_removed_fraction', 0):.1f}% of parameters and "
        f"{100 * summary.get('flops_removed_fraction', 0):.1f}% of MACs removed, no retraining"
    )
    print(
        f"test accuracy {summary.get('unpruned_test_accuracy', 0):.4f} -> {summary.get('test_accuracy', 0):.4f} "
        f"as reported; reloaded checkpoint measured here: {measured:.4f}"
    )
    latency = summary.get("latency") or {}
    for batch, point in sorted(latency.get("batches", {}).items(), key=lambda kv: int(kv[0])):
        print(
            f"measured on this {latency.get('device', '?')} ({latency.get('threads', '?')} threads), batch {batch}: "
            f"{point['original_ms']:.2f} ms -> {point['compressed_ms']:.2f} ms ({point['speedup']:.2f}x, median)"
        )
    print()
    for name, path in sorted(paths.items()):
        print(f"{name:>22}: {path}")
    if abs(measured - summary.get("test_accuracy", -1)) > 1e-9:
        print("pxp demo: the reloaded checkpoint does not reproduce the reported accuracy", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
