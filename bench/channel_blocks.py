"""Latency of one conv against its channel count: the staircase behind ``PruneSpec.round_to``.

Times a 3×3 conv with ``C`` input and ``C`` output channels (batch 32, ``--size``²,
``--threads`` threads, fastest of ``--runs`` interleaved runs) for every ``C`` in
``--channels``. On a CPU whose kernels work in blocks of 16 channels, every count
in one block costs the same, so channels pruned inside a block save nothing.

    .venv/bin/python bench/channel_blocks.py --channels 40-66 --size 16
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from pxp.pruning.hardware import channel_block


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--channels", default="40-66", help="range lo-hi (inclusive) of channel counts")
    parser.add_argument("--size", type=int, default=16, help="feature-map side")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lo, hi = (int(v) for v in args.channels.split("-"))
    counts = list(range(lo, hi + 1))
    convs = {c: nn.Conv2d(c, c, 3, padding=1, bias=False).eval() for c in counts}
    inputs = {c: torch.randn(args.batch, c, args.size, args.size) for c in counts}
    times: dict[int, list[float]] = {c: [] for c in counts}
    with torch.inference_mode():
        for c in counts:
            convs[c](inputs[c])
        for _ in range(args.runs):
            for c in counts:
                start = time.perf_counter()
                convs[c](inputs[c])
                times[c].append(time.perf_counter() - start)
    block = channel_block(torch.device("cpu"))
    print(
        f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()} "
        f"(round_to auto = {block}), batch {args.batch}, {args.size}x{args.size}, {args.threads} thread(s)\n"
    )
    print("| channels | ms (fastest) | ms per channel² ×1000 |")
    print("|---|---|---|")
    for c in counts:
        ms = 1e3 * min(times[c])
        print(f"| {c}{' ←' if c % block == 0 else ''} | {ms:.2f} | {1e3 * ms / (c * c):.3f} |")


if __name__ == "__main__":
    main()
