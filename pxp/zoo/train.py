"""Deterministic CPU training of one digits zoo model."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
import torch.utils.deterministic
from torch import nn

from pxp.data import LabelledData, load_data
from pxp.models import get_architecture, instantiate
from pxp.spec import DataSpec
from pxp.zoo.recipe import RECIPE_VERSION, RECIPES, Recipe


@contextmanager
def deterministic(seed: int) -> Iterator[None]:
    """Seeded global RNG, deterministic algorithms and one intra-op thread inside; all restored on exit.

    One thread makes results independent of the machine's core count, and on a
    shared 2-core box it is also the fastest choice for models this small
    (two threads contending with other processes were several times slower).
    Filling uninitialised memory is switched off: it only guards ops that read
    memory they did not write, costs ~10 % here, and every CPU op used writes its output.
    """
    previous = torch.are_deterministic_algorithms_enabled()
    previous_fill = torch.utils.deterministic.fill_uninitialized_memory  # type: ignore[attr-defined]  # absent from torch's stubs
    threads = torch.get_num_threads()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.use_deterministic_algorithms(True)
        torch.utils.deterministic.fill_uninitialized_memory = False  # type: ignore[attr-defined]  # absent from torch's stubs
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(threads)
            torch.utils.deterministic.fill_uninitialized_memory = previous_fill  # type: ignore[attr-defined]  # absent from torch's stubs
            torch.use_deterministic_algorithms(previous)


def _shift(
    batch: torch.Tensor, max_shift: int, background: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """Translate each image by up to ``max_shift`` pixels; uncovered pixels get ``background``."""
    if max_shift <= 0:
        return batch
    n, _, h, w = batch.shape
    padded = background.view(1, -1, 1, 1).expand(n, -1, h + 2 * max_shift, w + 2 * max_shift).clone()
    padded[:, :, max_shift : max_shift + h, max_shift : max_shift + w] = batch
    offsets = torch.randint(0, 2 * max_shift + 1, (n, 2), generator=generator).tolist()
    return torch.stack([padded[i, :, dy : dy + h, dx : dx + w] for i, (dy, dx) in enumerate(offsets)])


def _lr_factor(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


@torch.no_grad()
def accuracy(model: nn.Module, data: LabelledData, mean: tuple[float, ...], std: tuple[float, ...]) -> float:
    was_training = model.training
    model.eval()
    correct = 0
    for start in range(0, len(data), 256):
        idx = torch.arange(start, min(start + 256, len(data)))
        correct += int((model(data.normalized(idx, mean, std)).argmax(1) == data.labels[idx]).sum())
    model.train(was_training)
    return correct / len(data)


def train_zoo_model(
    name: str, kwargs: dict[str, Any], *, seed: int = 0, progress: bool = False
) -> tuple[nn.Module, dict[str, Any]]:
    """Train ``name`` with effective ``kwargs`` on ``digits-train``; returns (eval model, metadata).

    Same name, kwargs and seed give bit-identical weights on the same machine and torch build.
    """
    info = get_architecture(name).resolve(kwargs)
    recipe: Recipe = RECIPES[name]
    train = load_data(
        DataSpec(source="digits-train"), image_size=info.image_size, channels=info.input_channels
    )
    heldout = load_data(DataSpec(source="digits"), image_size=info.image_size, channels=info.input_channels)
    mean, std = info.mean, info.std
    inputs = train.normalized(torch.arange(len(train)), mean, std)
    background = (torch.zeros(len(mean)) - torch.tensor(mean)) / torch.tensor(std)
    started = time.perf_counter()
    with deterministic(seed):
        model = instantiate(info, kwargs, seed=seed)
        generator = torch.Generator().manual_seed(seed)
        optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
        steps_per_epoch = math.ceil(len(train) / recipe.batch_size)
        total = recipe.epochs * steps_per_epoch
        warmup = recipe.warmup_epochs * steps_per_epoch
        step = 0
        model.train()
        for epoch in range(recipe.epochs):
            order = torch.randperm(len(train), generator=generator)
            running = 0.0
            for start in range(0, len(train), recipe.batch_size):
                idx = order[start : start + recipe.batch_size]
                for group in optimizer.param_groups:
                    group["lr"] = recipe.lr * _lr_factor(step, total, warmup)
                x = _shift(inputs[idx], recipe.max_shift, background, generator)
                loss = F.cross_entropy(model(x), train.labels[idx], label_smoothing=recipe.label_smoothing)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                running += float(loss.detach()) * len(idx)
                step += 1
            if progress:
                print(
                    f"[pxp.zoo] {name} epoch {epoch + 1}/{recipe.epochs} loss {running / len(train):.4f}",
                    file=sys.stderr,
                    flush=True,
                )
        model.eval()
    seconds = time.perf_counter() - started
    metadata = {
        "architecture": name,
        "kwargs": kwargs,
        "seed": seed,
        "recipe_version": RECIPE_VERSION,
        "recipe": recipe.as_dict(),
        "train_accuracy": accuracy(model, train, mean, std),
        "heldout_accuracy": accuracy(model, heldout, mean, std),
        "num_train": len(train),
        "num_heldout": len(heldout),
        "train_seconds": round(seconds, 2),
        "torch_version": torch.__version__,
    }
    return model, metadata
