from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch

import pxp.zoo
from pxp.errors import InvalidSpecError, UnsupportedArchitectureError
from pxp.models import build_model
from pxp.spec import ModelSpec
from pxp.zoo import TINY_KWARGS, ZOO_NAMES, load_zoo_model, zoo_entry
from pxp.zoo.train import train_zoo_model

TINY_VGG = TINY_KWARGS["digits_vgg"]


@pytest.fixture(scope="module")
def zoo_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache holding the tiny VGG, trained once for this module."""
    root = tmp_path_factory.mktemp("zoo-cache")
    load_zoo_model("digits_vgg", TINY_VGG, cache_dir=root)
    return root


def _forbid_training(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("the zoo retrained a cached model")

    monkeypatch.setattr(pxp.zoo, "train_zoo_model", fail)


def test_tiny_vgg_trains_to_threshold_and_writes_entry(zoo_cache: Path) -> None:
    entry = zoo_entry("digits_vgg", TINY_VGG, cache_dir=zoo_cache)
    assert (entry / "weights.safetensors").is_file()
    meta = json.loads((entry / "meta.json").read_text())
    assert meta["heldout_accuracy"] >= 0.80
    assert meta["num_heldout"] == 719 and meta["num_train"] == 1078
    assert meta["kwargs"]["widths"] == [8, 16, 32] and meta["seed"] == 0
    assert not list(entry.parent.glob(".*tmp*"))


def test_cache_hit_does_not_retrain(zoo_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _forbid_training(monkeypatch)
    model, meta = load_zoo_model("digits_vgg", TINY_VGG, cache_dir=zoo_cache)
    assert not model.training
    assert meta["heldout_accuracy"] >= 0.80
    # build_model goes through the same cache for zoo names without weights.
    loaded = build_model(ModelSpec(architecture="digits_vgg", kwargs=TINY_VGG), cache_dir=zoo_cache)
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    assert loaded.num_classes == 10 and loaded.info.image_size == 32


def test_key_depends_on_kwargs_seed_and_defaults_are_normalised(tmp_path: Path) -> None:
    base = zoo_entry("digits_vgg", TINY_VGG, cache_dir=tmp_path)
    assert zoo_entry("digits_vgg", {**TINY_VGG, "num_classes": 10}, cache_dir=tmp_path) == base
    assert zoo_entry("digits_vgg", {**TINY_VGG, "hidden": 16}, cache_dir=tmp_path) != base
    assert zoo_entry("digits_vgg", TINY_VGG, cache_dir=tmp_path, seed=1) != base
    assert zoo_entry("digits_vgg", None, cache_dir=tmp_path) != base


def test_cache_dir_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PXP_CACHE_DIR", str(tmp_path / "env-cache"))
    assert zoo_entry("digits_vit").is_relative_to(tmp_path / "env-cache" / "zoo")


def test_broken_entry_is_retrained_to_identical_weights(
    zoo_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A truncated cache entry is retrained; the same seed reproduces the original bytes exactly."""
    entry = zoo_entry("digits_vgg", TINY_VGG, cache_dir=zoo_cache)
    copy = zoo_entry("digits_vgg", TINY_VGG, cache_dir=tmp_path)
    copy.mkdir(parents=True)
    (copy / "meta.json").write_text((entry / "meta.json").read_text())
    original = (entry / "weights.safetensors").read_bytes()
    (copy / "weights.safetensors").write_bytes(original[: len(original) // 3])
    calls: list[int] = []

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return train_zoo_model(*args, **kwargs)

    monkeypatch.setattr(pxp.zoo, "train_zoo_model", counting)
    model, meta = load_zoo_model("digits_vgg", TINY_VGG, cache_dir=tmp_path)
    assert calls == [1]
    assert meta["heldout_accuracy"] >= 0.80
    assert (copy / "weights.safetensors").read_bytes() == original
    cached, _ = load_zoo_model("digits_vgg", TINY_VGG, cache_dir=zoo_cache)
    for (k, a), (_, b) in zip(cached.state_dict().items(), model.state_dict().items(), strict=True):
        assert torch.equal(a, b), k


def test_entry_from_another_recipe_is_not_served(zoo_cache: Path, tmp_path: Path) -> None:
    entry = zoo_entry("digits_vgg", TINY_VGG, cache_dir=zoo_cache)
    stale = tmp_path / entry.name
    shutil.copytree(entry, stale)
    meta = json.loads((stale / "meta.json").read_text())
    meta["recipe"]["epochs"] += 1
    (stale / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="different recipe"):
        pxp.zoo._load_entry("digits_vgg", {"num_classes": 10, **TINY_VGG}, stale)
    model, _ = pxp.zoo._load_entry("digits_vgg", {"num_classes": 10, **TINY_VGG}, entry)
    assert not model.training


def test_refusals() -> None:
    with pytest.raises(UnsupportedArchitectureError, match="not a zoo model"):
        load_zoo_model("resnet18")
    with pytest.raises(InvalidSpecError, match="num_classes"):
        load_zoo_model("digits_vgg", {"num_classes": 5})
    with pytest.raises(InvalidSpecError, match="JSON"):
        zoo_entry("digits_vgg", {"widths": {8, 16}})
    assert set(ZOO_NAMES) == set(TINY_KWARGS)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["digits_resnet18", "digits_vit"])
def test_other_tiny_models_reach_threshold(name: str, tmp_path: Path) -> None:
    _, meta = load_zoo_model(name, TINY_KWARGS[name], cache_dir=tmp_path)
    assert meta["heldout_accuracy"] >= 0.80


@pytest.mark.slow
def test_concurrent_processes_train_once(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        from pathlib import Path
        import pxp.zoo
        calls = []
        real = pxp.zoo.train_zoo_model
        def counting(*a, **k):
            calls.append(1)
            return real(*a, **k)
        pxp.zoo.train_zoo_model = counting
        model, meta = pxp.zoo.load_zoo_model("digits_vgg", {TINY_VGG!r}, cache_dir=Path({str(tmp_path)!r}))
        print(len(calls), meta["heldout_accuracy"])
        """
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True) for _ in range(2)
    ]
    outputs = [p.communicate(timeout=600)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sorted(int(o[0]) for o in outputs) == [0, 1]
    assert outputs[0][1] == outputs[1][1]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "threshold"), [("digits_vgg", 0.95), ("digits_resnet18", 0.95), ("digits_vit", 0.90)]
)
def test_full_size_zoo_accuracy(name: str, threshold: float) -> None:
    """Trains the full-size models into the session's cache: minutes each on 2 CPU cores."""
    _, meta = load_zoo_model(name)
    assert meta["heldout_accuracy"] >= threshold
