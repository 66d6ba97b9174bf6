"""Build a model from a :class:`~pxp.spec.ModelSpec`: registry name + kwargs + optional checkpoint."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pxp.errors import InvalidSpecError
from pxp.models.checkpoint import load_state_dict_file, load_weights
from pxp.models.infer import check_matches, describe, fill_kwargs, suggest
from pxp.models.registry import ArchitectureInfo, get_architecture, is_zoo
from pxp.spec import ModelSpec

#: Seed of random initialisation, so two builds of an untrained model are identical.
INIT_SEED = 0


@dataclass
class LoadedModel:
    #: The model, on CPU, in eval mode.
    model: nn.Module
    #: Registry entry, with ``input_channels`` / ``image_size`` as the kwargs set them.
    info: ArchitectureInfo
    #: Effective constructor kwargs: ``info.builder(**kwargs)`` rebuilds the architecture.
    kwargs: dict[str, Any]
    num_classes: int
    #: Preprocessing settings read from the checkpoint: ``{"image_size": "checkpoint", ...}``.
    sources: dict[str, str] = field(default_factory=dict)
    #: Kwargs filled from the checkpoint (the user did not give them), with their values.
    inferred: dict[str, Any] = field(default_factory=dict)


def _accepted(builder: Any) -> str:
    target = getattr(builder, "__wrapped_target__", None)
    if isinstance(target, str):
        import torchvision.models

        builder = getattr(torchvision.models, target)
    try:
        params = inspect.signature(builder).parameters
    except (TypeError, ValueError):
        return "see the builder's documentation"
    names = [n for n, p in params.items() if n != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
    return ", ".join(names) if names else "see the builder's documentation"


def instantiate(info: ArchitectureInfo, kwargs: dict[str, Any], *, seed: int = INIT_SEED) -> nn.Module:
    """``info.builder(**kwargs)`` initialised from ``seed`` (the global RNG is left untouched).

    Bad kwargs become :class:`InvalidSpecError`.
    """
    forbidden = sorted(set(kwargs) & info.forbidden_kwargs)
    if forbidden:
        raise InvalidSpecError(
            f"kwargs {forbidden} are not allowed for {info.name}: pxp never downloads weights; "
            "pass a checkpoint as ModelSpec.weights instead"
        )
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = info.builder(**kwargs)
    except (TypeError, ValueError, AssertionError, KeyError) as exc:
        raise InvalidSpecError(
            f"cannot build {info.name} with kwargs {kwargs}: {exc}. Accepted kwargs: {_accepted(info.builder)}"
        ) from None
    if not isinstance(model, nn.Module):
        raise InvalidSpecError(f"builder of {info.name} returned {type(model).__name__}, not an nn.Module")
    return model.eval()


def _classifier_name(model: nn.Module) -> str | None:
    last = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last = name
    return last


def _checkpoint_num_classes(model: nn.Module, state: dict[str, torch.Tensor]) -> int | None:
    """Output count of the checkpoint's classifier, if it differs from the model's."""
    head = _classifier_name(model)
    if head is None:
        return None
    key = f"{head}.weight"
    weight = model.get_submodule(head).weight
    assert isinstance(weight, torch.Tensor)
    theirs = state.get(key)
    if (
        theirs is None
        or theirs.dim() != 2
        or theirs.shape[1] != weight.shape[1]
        or theirs.shape[0] == weight.shape[0]
    ):
        return None
    return int(theirs.shape[0])


def build_model(spec: ModelSpec, *, cache_dir: Path | None = None) -> LoadedModel:
    """Build ``spec.architecture`` with ``spec.kwargs`` and its weights, in eval mode on CPU.

    Weights, in order:
    - ``spec.weights`` (safetensors or weights-only torch file), loaded strictly. Kwargs the
      checkpoint fixes (:mod:`pxp.models.infer`: ``num_classes``, a ViT's image/patch size,
      width, depth and MLP size, a ResNet's block type and layers, input channels, ...) and
      the user left out are filled from it; any disagreement between the checkpoint and the
      built model is an :class:`InvalidModelError` with both numbers.
    - zoo names (``digits_*``) without weights: the trained zoo model, from the cache or
      trained now (see :mod:`pxp.zoo`).
    - any other name without weights: deterministic random initialisation
      (seed :data:`INIT_SEED`), meant for tests and benchmarks only.
    """
    info = get_architecture(spec.architecture)
    kwargs = info.effective_kwargs(spec.kwargs)
    sources: dict[str, str] = {}
    inferred: dict[str, Any] = {}
    if spec.weights is not None:
        state = load_state_dict_file(spec.weights)
        theirs = describe(state)
        inferred, used = fill_kwargs(theirs, info.inferable, spec.kwargs)
        kwargs.update(inferred)
        sources = {"image_size": "checkpoint"} if "image_size" in used else {}
        if "in_channels" in used:
            sources["channels"] = "checkpoint"
        model = _instantiate_for_checkpoint(info, kwargs, inferred)
        if "num_classes" not in spec.kwargs and "num_classes" not in inferred:
            found = _checkpoint_num_classes(model, state)
            if found is not None:
                kwargs["num_classes"] = inferred["num_classes"] = found
                model = instantiate(info, kwargs)
        hint = None if info.generic else suggest(theirs)
        check_matches(info.name, kwargs, theirs, describe(model.state_dict()), hint)
        load_weights(model, state)
    elif is_zoo(info.name):
        from pxp.zoo import load_zoo_model

        model, _ = load_zoo_model(info.name, dict(spec.kwargs), cache_dir=cache_dir)
    else:
        model = instantiate(info, kwargs)
    model.eval()
    return LoadedModel(
        model=model,
        info=info.resolve(kwargs),
        kwargs=kwargs,
        num_classes=int(kwargs["num_classes"]),
        sources=sources,
        inferred=inferred,
    )


def _instantiate_for_checkpoint(
    info: ArchitectureInfo, kwargs: dict[str, Any], inferred: dict[str, Any]
) -> nn.Module:
    """:func:`instantiate`, saying which kwargs came from the checkpoint when it fails."""
    try:
        return instantiate(info, kwargs)
    except InvalidSpecError as exc:
        if not inferred:
            raise
        note = ""
        if info.family == "vit" and "num_heads" not in kwargs:
            note = " num_heads is not stored in a checkpoint; pass it in the model kwargs."
        raise InvalidSpecError(f"{exc} (read from the checkpoint: {inferred}).{note}") from None
