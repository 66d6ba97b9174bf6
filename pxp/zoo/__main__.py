"""``python -m pxp.zoo [names...] [--tiny] [--seed N] [--cache-dir DIR] [--record-references]``.

Trains (or loads) zoo models and prints one line per model with held-out accuracy,
training time and whether the weights are the reference ones recorded in
``pxp/zoo/reference_checksums.json`` (``--record-references`` records them).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from pxp.zoo import TINY_KWARGS, ZOO_NAMES, checksum, load_zoo_model, zoo_entry


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pxp.zoo", description=__doc__)
    parser.add_argument("names", nargs="*", help=f"any of {', '.join(ZOO_NAMES)} (default: all)")
    parser.add_argument("--tiny", action="store_true", help="the TINY_KWARGS configurations")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--progress", action="store_true")
    parser.add_argument(
        "--record-references",
        action="store_true",
        help="record these models' weight checksums as the reference for this torch version",
    )
    args = parser.parse_args(argv)
    unknown = sorted(set(args.names) - set(ZOO_NAMES))
    if unknown:
        parser.error(f"unknown zoo model(s) {unknown}; choose from {list(ZOO_NAMES)}")
    references = checksum.load_references()
    for name in args.names or ZOO_NAMES:
        kwargs = TINY_KWARGS[name] if args.tiny else None
        started = time.perf_counter()
        model, meta = load_zoo_model(
            name, kwargs, cache_dir=args.cache_dir, seed=args.seed, progress=args.progress
        )
        params = sum(p.numel() for p in model.parameters())
        entry = zoo_entry(name, kwargs, cache_dir=args.cache_dir, seed=args.seed)
        digest = checksum.weights_sha256(model)
        if args.record_references:
            references[checksum.reference_key(entry.name)] = digest
            checksum.REFERENCE_FILE.write_text(json.dumps(references, indent=1, sort_keys=True) + "\n")
        verdict = checksum.compare_with_reference(entry.name, digest)
        shown = {True: "reference weights", False: "DIFFERS from the reference", None: "no reference"}[
            verdict
        ]
        print(
            f"{name:16s} params {params:>8d}  held-out {meta['heldout_accuracy']:.4f}  "
            f"train {meta['train_accuracy']:.4f}  trained in {meta['train_seconds']:.1f}s  "
            f"(this call {time.perf_counter() - started:.1f}s)  sha256 {digest[:12]} ({shown})  {entry}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
