"""Small real models trained on the bundled digits, cached on disk (ARCHITECTURE.md §3).

``load_zoo_model("digits_vgg")`` returns the trained model, training it first
(deterministically, on CPU, in minutes) if the cache has no entry for this
architecture, kwargs, seed and recipe version. The cache lives under
``cache_dir``, else ``$PXP_CACHE_DIR``, else ``~/.cache/pxp``; it is never
part of the repository. :data:`TINY_KWARGS` are configurations that train in
seconds, for tests.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

from torch import nn

from pxp.errors import InvalidModelError, InvalidSpecError, UnsupportedArchitectureError
from pxp.models import ZOO_ARCHITECTURES, get_architecture, instantiate, load_state_dict_file, load_weights
from pxp.models.checkpoint import save_safetensors
from pxp.zoo import cache, checksum
from pxp.zoo.recipe import RECIPE_VERSION, RECIPES, Recipe
from pxp.zoo.train import train_zoo_model

ZOO_NAMES: tuple[str, ...] = ZOO_ARCHITECTURES

#: Configurations that train to ≥ 80 % held-out accuracy in seconds, for tests.
TINY_KWARGS: dict[str, dict[str, Any]] = {
    "digits_vgg": {"widths": [8, 16, 32], "convs_per_stage": 1, "hidden": 32},
    "digits_resnet18": {"base_width": 4, "layers": [1, 1, 1, 1]},
    "digits_vit": {"patch_size": 8, "num_layers": 1, "num_heads": 2, "hidden_dim": 32, "mlp_dim": 64},
}

__all__ = [
    "RECIPES",
    "RECIPE_VERSION",
    "TINY_KWARGS",
    "ZOO_NAMES",
    "Recipe",
    "default_cache_dir",
    "load_zoo_model",
    "zoo_entry",
]

default_cache_dir = cache.default_cache_dir


def _effective(name: str, kwargs: dict[str, Any] | None) -> dict[str, Any]:
    if name not in ZOO_NAMES:
        raise UnsupportedArchitectureError(f"{name!r} is not a zoo model; zoo models: {list(ZOO_NAMES)}")
    effective = get_architecture(name).effective_kwargs(kwargs)
    if effective.get("num_classes") != 10:
        raise InvalidSpecError(
            f"zoo models are trained on the 10 digit classes; num_classes={effective.get('num_classes')!r} "
            "needs a checkpoint (ModelSpec.weights)"
        )
    return effective


def zoo_entry(
    name: str, kwargs: dict[str, Any] | None = None, *, cache_dir: Path | None = None, seed: int = 0
) -> Path:
    """Directory of the cache entry for this model (it may not exist yet)."""
    effective = _effective(name, kwargs)
    root = Path(cache_dir) if cache_dir is not None else cache.default_cache_dir()
    return cache.entry_dir(root, name, cache.cache_key(name, effective, seed, RECIPE_VERSION))


def _load_entry(name: str, kwargs: dict[str, Any], entry: Path) -> tuple[nn.Module, dict[str, Any]]:
    """The cached model; ValueError if it was trained with another recipe than today's."""
    meta = cache.read_meta(entry)
    if meta.get("recipe") != RECIPES[name].as_dict():
        raise ValueError(f"{entry.name} was trained with a different recipe")
    model = instantiate(get_architecture(name), kwargs)
    load_weights(model, load_state_dict_file(entry / cache.WEIGHTS))
    return model.eval(), meta


def load_zoo_model(
    name: str,
    kwargs: dict[str, Any] | None = None,
    *,
    cache_dir: Path | None = None,
    seed: int = 0,
    progress: bool = False,
) -> tuple[nn.Module, dict[str, Any]]:
    """The trained zoo model ``name`` (eval mode, CPU) and its metadata.

    Metadata holds ``train_accuracy``, ``heldout_accuracy`` (on the ``digits`` pool),
    ``train_seconds``, the recipe, kwargs and seed. Trains and caches on a miss; a cache
    entry that cannot be read, or whose recorded recipe differs from the current one, is retrained.
    """
    effective = _effective(name, kwargs)
    entry = zoo_entry(name, kwargs, cache_dir=cache_dir, seed=seed)
    if cache.is_complete(entry):
        try:
            return _load_entry(name, effective, entry)
        except (InvalidModelError, OSError, ValueError):
            pass
    with cache.locked(entry):
        if cache.is_complete(entry):
            try:
                return _load_entry(name, effective, entry)
            except (InvalidModelError, OSError, ValueError):
                pass
        if progress:
            print(
                f"[pxp.zoo] training {name} {effective} (seed {seed}) into {entry}",
                file=sys.stderr,
                flush=True,
            )
        model, meta = train_zoo_model(name, effective, seed=seed, progress=progress)
        meta["weights_sha256"] = checksum.weights_sha256(model)
        meta["matches_reference"] = checksum.compare_with_reference(entry.name, meta["weights_sha256"])
        staging = cache.staging_dir(entry)
        try:
            save_safetensors(model.state_dict(), staging / cache.WEIGHTS, {"architecture": name})
            cache.write_meta(staging, meta)
            cache.publish(entry, staging)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return model, meta
