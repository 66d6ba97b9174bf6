"""``python -m pxp.zoo [names...] [--tiny] [--seed N] [--cache-dir DIR]``: train (or load) zoo models.

Prints one line per model with held-out accuracy and training time, so the
cache can be warmed ahead of tests or demos.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from pxp.zoo import TINY_KWARGS, ZOO_NAMES, load_zoo_model, zoo_entry


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pxp.zoo", description=__doc__)
    parser.add_argument("names", nargs="*", help=f"any of {', '.join(ZOO_NAMES)} (default: all)")
    parser.add_argument("--tiny", action="store_true", help="the TINY_KWARGS configurations")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.names) - set(ZOO_NAMES))
    if unknown:
        parser.error(f"unknown zoo model(s) {unknown}; choose from {list(ZOO_NAMES)}")
    for name in args.names or ZOO_NAMES:
        kwargs = TINY_KWARGS[name] if args.tiny else None
        started = time.perf_counter()
        model, meta = load_zoo_model(
            name, kwargs, cache_dir=args.cache_dir, seed=args.seed, progress=args.progress
        )
        params = sum(p.numel() for p in model.parameters())
        print(
            f"{name:16s} params {params:>8d}  held-out {meta['heldout_accuracy']:.4f}  "
            f"train {meta['train_accuracy']:.4f}  trained in {meta['train_seconds']:.1f}s  "
            f"(this call {time.perf_counter() - started:.1f}s)  {zoo_entry(name, kwargs, cache_dir=args.cache_dir, seed=args.seed)}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
