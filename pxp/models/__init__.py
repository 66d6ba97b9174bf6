"""Architecture registry (torchvision, timm ViTs, the digits zoo) and safe checkpoint loading."""

from __future__ import annotations

from pxp.models.build import LoadedModel, build_model, instantiate
from pxp.models.checkpoint import load_state_dict_file, load_weights, save_safetensors, state_dict_mismatch
from pxp.models.compressed import load_compressed
from pxp.models.registry import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ZOO_ARCHITECTURES,
    ArchitectureInfo,
    get_architecture,
    is_zoo,
    list_architectures,
    prunes_heads_by_default,
)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ZOO_ARCHITECTURES",
    "ArchitectureInfo",
    "LoadedModel",
    "build_model",
    "get_architecture",
    "instantiate",
    "is_zoo",
    "list_architectures",
    "load_compressed",
    "load_state_dict_file",
    "load_weights",
    "prunes_heads_by_default",
    "save_safetensors",
    "state_dict_mismatch",
]
