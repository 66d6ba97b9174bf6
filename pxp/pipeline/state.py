"""The job's shared state: model, data splits and prunable layers, built once per job."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import nn

from pxp.attribution.support import require_lrp_support
from pxp.components import Family, PrunableLayer, default_kind, find_layers, prepare_model
from pxp.data import LabelledData, Splits, load_data, make_splits
from pxp.errors import InvalidDataError, InvalidSpecError
from pxp.models import LoadedModel, build_model
from pxp.pipeline.reporter import Reporter
from pxp.pipeline.sanity import BaselineCheck, Preprocessing, check_baseline
from pxp.pruning.evaluate import CurveMethod, make_planner
from pxp.pruning.ranking import PruneOrder
from pxp.pruning.removal.plan import Planner
from pxp.spec import JobSpec

if TYPE_CHECKING:
    from pxp.pruning.coupling import ComponentGraph


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
    #: How curves are evaluated; "masked" only to measure the fast path against (bench/job.py).
    curve_method: CurveMethod = "auto"
    _planner: Planner | None = field(default=None, init=False, repr=False)
    _planned: bool = field(default=False, init=False, repr=False)

    def planner(self) -> Planner | None:
        """The removal planner of the prunable layers, built once per job (None: curves use masking)."""
        if not self._planned:
            self._planner = make_planner(self.prepared, self.family, self.layers, self.test[0])
            self._planned = True
        return self._planner

    _graph: ComponentGraph | None = field(default=None, repr=False, compare=False)
    #: How the images became model inputs (size, channels, mean, std and their sources).
    preprocessing: Preprocessing | None = None
    #: The sanity gate's measurement; ``passed`` is False only under ``allow_low_accuracy``.
    baseline: BaselineCheck | None = None

    def order(self, scores: dict[str, torch.Tensor], normalize: bool | None = None) -> PruneOrder:
        """The global pruning order of ``scores`` under this job's prune spec."""
        from pxp.pruning.coupling import job_order

        return job_order(self.layers, scores, self.spec.prune, self.device, self.component_graph, normalize)

    def component_graph(self) -> ComponentGraph:
        """Coupled groups and component costs of the prepared model (built once, cached here)."""
        from pxp.pruning.coupling import component_graph

        if self._graph is None:
            self._graph = component_graph(self.prepared, self.family, self.layers, self.reference[0][:1])
        return self._graph


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
        BaselineAccuracyError: the unpruned model is near chance on the test split (see
            :mod:`pxp.pipeline.sanity`) and ``spec.baseline.allow_low_accuracy`` is off.
    """
    report("load", message=f"building {spec.model.architecture}")
    loaded = build_model(spec.model)
    info = loaded.info
    family: Family = info.family
    device = resolve_device(spec.device)
    if spec.search is not None or any(c.criterion == "lrp" for c in spec.criteria):
        require_lrp_support(loaded.model, spec.model.architecture, family)
    report("data", 1, message=f"loading data from {spec.data.source}")
    image_size = spec.data.image_size or info.image_size
    if spec.data.image_size and info.image_size_kwarg and spec.data.image_size != info.image_size:
        origin = "the checkpoint's positional embedding" if loaded.sources.get("image_size") else "its kwargs"
        raise InvalidSpecError(
            f"--image-size {spec.data.image_size} (DataSpec.image_size) but {spec.model.architecture} takes "
            f"{info.image_size}×{info.image_size} images ({origin}: {info.image_size_kwarg}={info.image_size}); "
            "leave --image-size out, or build the model for the other size"
        )
    data = load_data(spec.data, image_size=image_size, channels=info.input_channels)
    if int(data.labels.max()) >= loaded.num_classes:
        raise InvalidDataError(
            f"the data has {len(data.class_names)} classes but the model outputs {loaded.num_classes}"
        )
    splits = make_splits(data.labels, spec.splits)
    mean = tuple(spec.data.mean or info.mean)
    std = tuple(spec.data.std or info.std)
    prepared = prepare_model(loaded.model, family).to(device)
    kind = spec.prune.components or default_kind(family, prepared)
    layers = find_layers(prepared, family, kind, spec.prune.exclude)
    report("data", 1, message=f"{len(layers)} prunable layers, {sum(x.size for x in layers)} {kind}")
    preprocessing = Preprocessing(
        image_size=image_size,
        channels=info.input_channels,
        mean=mean,
        std=std,
        sources={
            "image_size": "spec"
            if spec.data.image_size
            else loaded.sources.get("image_size", "architecture default"),
            "mean": "spec" if spec.data.mean else "architecture default",
            "std": "spec" if spec.data.std else "architecture default",
            "channels": loaded.sources.get("channels", "architecture default"),
        },
    )
    test = _split_tensors(data, splits.test, mean, std, device)
    report("data", 1, message="checking the unpruned accuracy")
    baseline = check_baseline(
        prepared, test[0], test[1], spec.baseline, preprocessing, spec.model.architecture
    )
    report("data", 1, message=f"unpruned accuracy {baseline.accuracy:.3f} (chance {baseline.chance:.3f})")
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
        test=test,
        preprocessing=preprocessing,
        baseline=baseline,
    )
