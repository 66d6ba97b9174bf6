"""Read what a checkpoint says about its own architecture.

A state dict fixes most constructor arguments through its tensor shapes: a ViT's
positional embedding and patch projection give the image size, patch size and width;
its key names give the depth; the classifier's rows give ``num_classes``; the first
conv's input channels say whether the model is grayscale. :func:`describe` turns a
state dict into such *descriptors* (plain JSON values), for torchvision
``VisionTransformer`` / ``ResNet`` / ``VGG`` (and the digits zoo built on them) and
timm ViTs. The model builder uses them to fill kwargs the user left out and, by
describing the built model the same way, to report any disagreement with both numbers
before loading (see :func:`check_matches`).

Descriptors that weights cannot fix are absent (a ViT's ``num_heads``, a CNN's image size).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

import torch

from pxp.errors import InvalidModelError

Descriptors = dict[str, Any]

#: Human-readable origin of each descriptor, for error messages.
_EVIDENCE: dict[str, str] = {
    "image_size": "positional embedding length × patch size",
    "patch_size": "patch projection kernel",
    "hidden_dim": "patch projection output channels",
    "num_layers": "number of encoder blocks",
    "mlp_dim": "first MLP layer rows",
    "num_classes": "classifier rows",
    "in_channels": "first conv's input channels",
    "representation_size": "pre-logits layer rows",
    "block": "conv3 present in the blocks (bottleneck) or not (basic)",
    "layers": "blocks per stage",
    "groups": "grouped 3×3 conv of the first block",
    "width_per_group": "first block's width / groups",
    "stem_width": "first conv's output channels",
    "cfg": "conv widths and pooling positions",
    "batch_norm": "whether BatchNorm running statistics are present",
    "widths": "conv widths per stage",
    "convs_per_stage": "convs between poolings",
    "hidden": "first classifier layer rows",
}


def _indices(state: Mapping[str, torch.Tensor], pattern: str) -> list[int]:
    found = {int(m.group(1)) for key in state if (m := re.match(pattern, key))}
    return sorted(found)


def _grid(tokens: int, prefix: int) -> int | None:
    for extra in (prefix, 0):
        side = math.isqrt(tokens - extra) if tokens > extra else 0
        if side and side * side == tokens - extra:
            return side
    return None


def _torchvision_vit(state: Mapping[str, torch.Tensor]) -> Descriptors:
    proj = state["conv_proj.weight"]
    pos = state["encoder.pos_embedding"]
    out: Descriptors = {
        "hidden_dim": int(proj.shape[0]),
        "in_channels": int(proj.shape[1]),
        "patch_size": int(proj.shape[2]),
    }
    side = _grid(int(pos.shape[1]), 1)
    if side is not None:
        out["image_size"] = side * out["patch_size"]
    blocks = _indices(state, r"encoder\.layers\.encoder_layer_(\d+)\.")
    if blocks:
        out["num_layers"] = len(blocks)
        prefix = f"encoder.layers.encoder_layer_{blocks[0]}.mlp."
        for name in ("0.weight", "linear_1.weight"):
            if prefix + name in state:
                out["mlp_dim"] = int(state[prefix + name].shape[0])
    if "heads.head.weight" in state:
        out["num_classes"] = int(state["heads.head.weight"].shape[0])
    if "heads.pre_logits.weight" in state:
        out["representation_size"] = int(state["heads.pre_logits.weight"].shape[0])
    return out


def _timm_vit(state: Mapping[str, torch.Tensor]) -> Descriptors:
    proj = state["patch_embed.proj.weight"]
    out: Descriptors = {
        "hidden_dim": int(proj.shape[0]),
        "in_channels": int(proj.shape[1]),
        "patch_size": int(proj.shape[2]),
    }
    prefix = int("cls_token" in state) + int("dist_token" in state)
    side = _grid(int(state["pos_embed"].shape[1]), prefix)
    if side is not None:
        out["image_size"] = side * out["patch_size"]
    blocks = _indices(state, r"blocks\.(\d+)\.")
    if blocks:
        out["num_layers"] = len(blocks)
        fc1 = state.get(f"blocks.{blocks[0]}.mlp.fc1.weight")
        if fc1 is not None:
            out["mlp_dim"] = int(fc1.shape[0])
    head = state.get("head.weight")
    if head is not None and head.dim() == 2:
        out["num_classes"] = int(head.shape[0])
    return out


def _resnet(state: Mapping[str, torch.Tensor]) -> Descriptors:
    stem = state["conv1.weight"]
    out: Descriptors = {"in_channels": int(stem.shape[1]), "stem_width": int(stem.shape[0])}
    out["layers"] = [len(_indices(state, rf"layer{i}\.(\d+)\.")) for i in range(1, 5)]
    bottleneck = "layer1.0.conv3.weight" in state
    out["block"] = "bottleneck" if bottleneck else "basic"
    if bottleneck:
        conv1, conv2 = state["layer1.0.conv1.weight"], state["layer1.0.conv2.weight"]
        width = int(conv1.shape[0])
        groups = max(1, width // int(conv2.shape[1]))
        out["groups"] = groups
        # torchvision: width = planes · width_per_group / 64 · groups, planes = 64 in layer1.
        out["width_per_group"] = width // groups
    if "fc.weight" in state:
        out["num_classes"] = int(state["fc.weight"].shape[0])
    return out


def _vgg_like(state: Mapping[str, torch.Tensor]) -> Descriptors:
    convs = [
        i for i in _indices(state, r"features\.(\d+)\.weight$") if state[f"features.{i}.weight"].dim() == 4
    ]
    out: Descriptors = {"in_channels": int(state[f"features.{convs[0]}.weight"].shape[1])}
    batch_norm = any(f"features.{i + 1}.running_mean" in state for i in convs)
    out["batch_norm"] = batch_norm
    step = 3 if batch_norm else 2
    layout: list[int | str] = []
    position = 0
    for i in convs:
        layout += ["M"] * max(0, i - position)
        layout.append(int(state[f"features.{i}.weight"].shape[0]))
        position = i + step
    stages: list[list[int]] = [[]]
    for item in layout:
        if item == "M":
            if stages[-1]:
                stages.append([])
        else:
            assert isinstance(item, int)
            stages[-1].append(item)
    stages = [s for s in stages if s]
    out["widths"] = [s[-1] for s in stages]
    out["convs_per_stage"] = [len(s) for s in stages]
    from torchvision.models.vgg import cfgs

    for name, cfg in cfgs.items():
        if [*layout, "M"] == cfg:
            out["cfg"] = name
    linears = [
        i
        for i in _indices(state, r"classifier\.(\d+)\.weight$")
        if state[f"classifier.{i}.weight"].dim() == 2
    ]
    if linears:
        out["hidden"] = int(state[f"classifier.{linears[0]}.weight"].shape[0])
        out["num_classes"] = int(state[f"classifier.{linears[-1]}.weight"].shape[0])
    return out


def describe(state: Mapping[str, torch.Tensor]) -> Descriptors:
    """What ``state`` fixes about its architecture; ``{}`` for layouts not recognised.

    Recognised: torchvision ``VisionTransformer`` (``conv_proj`` + ``encoder.pos_embedding``),
    timm ViTs (``patch_embed.proj`` + ``pos_embed``), torchvision ``ResNet`` (``conv1`` +
    ``layer1``..``layer4``), torchvision ``VGG`` and other ``features``/``classifier`` CNNs.
    """
    try:
        if "conv_proj.weight" in state and "encoder.pos_embedding" in state:
            return _torchvision_vit(state)
        if "patch_embed.proj.weight" in state and "pos_embed" in state:
            return _timm_vit(state)
        if "conv1.weight" in state and "layer1.0.conv1.weight" in state:
            return _resnet(state)
        if any(re.match(r"features\.\d+\.weight$", k) for k in state):
            return _vgg_like(state)
    except (KeyError, IndexError, AttributeError):
        return {}
    return {}


def fill_kwargs(
    descriptors: Descriptors, inferable: Mapping[str, str], given: Mapping[str, Any]
) -> tuple[dict[str, Any], list[str]]:
    """Kwargs the checkpoint fixes and the user did not give, and the descriptor names used.

    ``inferable`` maps a descriptor name to the builder kwarg it sets.
    """
    filled: dict[str, Any] = {}
    used: list[str] = []
    for name, kwarg in inferable.items():
        if name in descriptors and kwarg not in given:
            filled[kwarg] = descriptors[name]
            used.append(name)
    return filled, used


def _fmt(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (list, str, bool)) else str(value)


def check_matches(
    architecture: str,
    kwargs: Mapping[str, Any],
    checkpoint: Descriptors,
    model: Descriptors,
    suggestion: str | None = None,
) -> None:
    """Raise if the checkpoint's descriptors disagree with the built model's.

    Raises:
        InvalidModelError: naming every disagreeing descriptor with the checkpoint's and the
            model's value and what in the checkpoint fixes it, plus ``suggestion``.
    """
    diffs = [
        f"{name}: checkpoint {_fmt(checkpoint[name])} ({_EVIDENCE.get(name, 'tensor shapes')}), "
        f"model {_fmt(model[name])}"
        for name in checkpoint
        if name in model and checkpoint[name] != model[name]
    ]
    if not diffs:
        return
    built = ", ".join(f"{k}={_fmt(v)}" for k, v in kwargs.items())
    raise InvalidModelError(
        f"the checkpoint does not match {architecture}({built}): "
        + "; ".join(diffs)
        + (f". {suggestion}" if suggestion else "")
    )


def suggest(descriptors: Descriptors) -> str | None:
    """A ``--model``/``--model-kwargs`` line that builds the checkpoint's architecture, if known."""
    d = descriptors
    if {"image_size", "patch_size", "num_layers", "hidden_dim", "mlp_dim"} <= set(
        d
    ) and "stem_width" not in d:
        keys = (
            "image_size",
            "patch_size",
            "num_layers",
            "hidden_dim",
            "mlp_dim",
            "num_classes",
            "in_channels",
        )
        kw = {k: d[k] for k in keys if k in d}
        return (
            f"It looks like --model VisionTransformer --model-kwargs '{json.dumps(kw)[:-1]}, \"num_heads\": H}}' "
            "(num_heads is not stored in a checkpoint)"
        )
    if "block" in d and "layers" in d:
        kw = {
            k: d[k]
            for k in ("block", "layers", "groups", "width_per_group", "num_classes", "in_channels")
            if k in d
        }
        return f"It looks like --model ResNet --model-kwargs '{json.dumps(kw)}'"
    if "cfg" in d:
        kw = {k: d[k] for k in ("cfg", "batch_norm", "num_classes", "in_channels") if k in d}
        return f"It looks like --model VGG --model-kwargs '{json.dumps(kw)}'"
    return None
