"""Can a residual block of the digits ResNet-18 be dropped without retraining? (depth pruning probe)

For each residual block, its branch output (``bn2``) is replaced by zero, by its per-channel
mean, or by its per-position mean over the reference samples, and the search-split accuracy
is measured. This is what collapsing a block to a constant would cost, the only way left to
shrink the 16-channel ``layer1`` that rounding keeps whole (docs/deliverable.md).

    PYTHONPATH=. .venv/bin/python bench/block_collapse.py --seed 0
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from deliverable import load

from pxp.pruning.curve import accuracy

MODES = ("zero", "channel mean", "position mean")


def branch_means(model: nn.Module, blocks: list[str], x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each block's branch output (its ``bn2``) averaged over the samples, per channel and position."""
    means: dict[str, torch.Tensor] = {}
    handles = []
    for block in blocks:

        def keep(_m: nn.Module, _i: tuple, out: torch.Tensor, block: str = block) -> None:
            means[block] = out.mean(0, keepdim=True)

        handles.append(model.get_submodule(f"{block}.bn2").register_forward_hook(keep))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return means


def collapsed_accuracy(
    model: nn.Module, block: str, mean: torch.Tensor, mode: str, x: torch.Tensor, y: torch.Tensor
) -> float:
    def replace(_m: nn.Module, _i: tuple, out: torch.Tensor) -> torch.Tensor:
        if mode == "zero":
            return torch.zeros_like(out)
        value = mean.mean((2, 3), keepdim=True) if mode == "channel mean" else mean
        return value.expand_as(out).clone()  # the block adds the identity in place

    hook: Callable[..., torch.Tensor] = replace
    handle = model.get_submodule(f"{block}.bn2").register_forward_hook(hook)
    try:
        return accuracy(model, x, y)
    finally:
        handle.remove()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0, help="split seed")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, _family, data = load("digits_resnet18", args.seed)
    x_search, y_search = data["search"]
    blocks = [n for n, _ in model.named_modules() if n.startswith("layer") and n.count(".") == 1]
    means = branch_means(model, blocks, data["reference"][0])
    print(
        f"digits_resnet18, split seed {args.seed}: search accuracy {accuracy(model, x_search, y_search):.4f}"
    )
    print("| block | " + " | ".join(MODES) + " |")
    print("|---|" + "---|" * len(MODES))
    for block in blocks:
        cells = [
            f"{collapsed_accuracy(model, block, means[block], m, x_search, y_search):.4f}" for m in MODES
        ]
        print(f"| {block} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
