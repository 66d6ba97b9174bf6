"""The job's shared state: model, data splits and prunable layers, built once per job."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pxp.components import Family, PrunableLayer, default_kind, find_layers, prepare_model
from pxp.data import LabelledData, Splits, load_data, make_splits
from pxp.errors import InvalidDataError, InvalidSpecError
from pxp.models import LoadedModel, build_model
from pxp.pipeline.reporter import Reporter
from pxp.pruning.ranking import PruneOrder, rank
from pxp.spec import JobSpec


def resolve_device(name: str) -> torch.device:
    """Turn a spec's device name into a torch device.

    ``"auto"`` picks CUDA when available, else CPU.

    Raises:
        InvalidSpecError: the name is not a torch device, or CUDA is asked for but absent.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise InvalidSpecError(f"unknown device {name!r}") from exc
    if device.type not in ("cpu", "cuda", "mps"):
        raise InvalidSpecError(f"device {name!r} cannot run a job; use auto, cpu, cuda, cuda:N or mps")
    count = torch.cuda.device_count() if device.type == "cuda" and torch.cuda.is_available() else 0
    if count and device.index is not None and device.index >= count:
        raise InvalidSpecError(f"device {name!r} requested but only {count} CUDA device(s) exist")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise InvalidSpecError("device 'mps' requested but MPS is not available")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InvalidSpecError("device 'cuda' requested but no CUDA device is available")
    return device


@dataclass
class JobState:
    """Everything the stages share: built once per job, reused by every criterion and trial."""

    spec: JobSpec
    loaded: LoadedModel
    family: Family
    data: LabelledData
    splits: Splits
    prepared: nn.Module
    layers: list[PrunableLayer]
    device: torch.device
    reference: tuple[torch.Tensor, torch.Tensor]
    search: tuple[torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor]

    def order(self, scores: dict[str, torch.Tensor], normalize: bool | None = None) -> PruneOrder:
        """The global pruning order of ``scores`` under this job's prune spec."""
        prune = self.spec.prune
        return rank(
            self.layers,
            scores,
            normalize_per_layer=prune.normalize_per_layer if normalize is None else normalize,
            min_keep=prune.min_keep,
        )


def _split_tensors(
    data: LabelledData,
    idx: torch.Tensor,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    return data.normalized(idx, mean, std).to(device), data.labels[idx].to(device)


def build_state(spec: JobSpec, report: Reporter) -> JobState:
    """Load the model and the data, split it and find the prunable layers.

    Raises:
        UnsupportedArchitectureError, InvalidModelError: the model cannot be built or loaded.
        InvalidDataError: the data cannot be read or does not fit the model.
        InvalidSpecError: the device or component choice is invalid.
    """
    report("load", message=f"building {spec.model.architecture}")
    loaded = build_model(spec.model)
    info = loaded.info
    family: Family = info.family
    device = resolve_device(spec.device)
    report("data", 1, message=f"loading data from {spec.data.source}")
    image_size = spec.data.image_size or info.image_size
    data = load_data(spec.data, image_size=image_size, channels=info.input_channels)
    if int(data.labels.max()) >= loaded.num_classes:
        raise InvalidDataError(
            f"the data has {len(data.class_names)} classes but the model outputs {loaded.num_classes}"
        )
    splits = make_splits(data.labels, spec.splits)
    mean = tuple(spec.data.mean or info.mean)
    std = tuple(spec.data.std or info.std)
    prepared = prepare_model(loaded.model, family).to(device)
    kind = spec.prune.components or default_kind(family)
    layers = find_layers(prepared, family, kind, spec.prune.exclude)
    report("data", 1, message=f"{len(layers)} prunable layers, {sum(x.size for x in layers)} {kind}")
    return JobState(
        spec=spec,
        loaded=loaded,
        family=family,
        data=data,
        splits=splits,
        prepared=prepared,
        layers=layers,
        device=device,
        reference=_split_tensors(data, splits.reference, mean, std, device),
        search=_split_tensors(data, splits.search, mean, std, device),
        test=_split_tensors(data, splits.test, mean, std, device),
    )
