"""A tiny trained digits VGG with small, disjoint reference / search / test splits."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from pxp.components import PrunableLayer, find_layers, prepare_model
from pxp.data import LabelledData, Splits, load_data, make_splits
from pxp.models import get_architecture
from pxp.spec import DataSpec, PruneSpec, SplitSpec

#: Few rates and small splits keep a trial to a fraction of a second on two shared cores.
RATES = [0.0, 0.2, 0.4, 0.6, 0.8]


@dataclass
class Bed:
    model: nn.Module
    layers: list[PrunableLayer]
    data: LabelledData
    splits: Splits
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def tensors(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.data.normalized(idx, self.mean, self.std), self.data.labels[idx]

    @property
    def reference(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.tensors(self.splits.reference)

    @property
    def search(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.tensors(self.splits.search)

    @property
    def test(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.tensors(self.splits.test)


SPLITS = SplitSpec(reference_samples_per_class=3, max_eval_samples=60, seed=0)


def make_bed(model: nn.Module, name: str, family: str = "cnn") -> Bed:
    info = get_architecture(name)
    data = load_data(DataSpec(), image_size=32, channels=1)
    prepared = prepare_model(model, family)  # type: ignore[arg-type]
    return Bed(
        model=prepared,
        layers=find_layers(prepared, family),  # type: ignore[arg-type]
        data=data,
        splits=make_splits(data.labels, SPLITS),
        mean=tuple(info.mean),
        std=tuple(info.std),
    )


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """One intra-op thread: on two cores shared with other jobs, more threads run several times slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def vgg() -> Bed:
    from pxp.zoo import TINY_KWARGS, load_zoo_model

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model, _ = load_zoo_model("digits_vgg", TINY_KWARGS["digits_vgg"])
    finally:
        torch.set_num_threads(previous)
    return make_bed(model, "digits_vgg")


@pytest.fixture
def prune() -> PruneSpec:
    return PruneSpec(rates=RATES)
