from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from pxp.errors import InvalidModelError
from pxp.models import (
    build_model,
    get_architecture,
    instantiate,
    load_state_dict_file,
    load_weights,
    save_safetensors,
)
from pxp.spec import ModelSpec

TINY = {"widths": [4, 8], "convs_per_stage": 1, "hidden": 8}


@pytest.fixture
def trained_like() -> torch.nn.Module:
    """A tiny digits VGG whose weights differ from the default random init."""
    info = get_architecture("digits_vgg")
    model = instantiate(info, info.effective_kwargs(TINY))
    torch.manual_seed(7)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
        for name, buf in model.named_buffers():
            if name.endswith("running_var"):
                buf.uniform_(0.5, 2.0)
    return model.eval()


def _outputs_match(a: torch.nn.Module, b: torch.nn.Module) -> None:
    x = torch.randn(4, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)


@pytest.mark.parametrize("fmt", ["safetensors", "pt", "pt-legacy"])
def test_round_trip_through_build_model(tmp_path: Path, trained_like: torch.nn.Module, fmt: str) -> None:
    state = trained_like.state_dict()
    path = tmp_path / f"ckpt.{'safetensors' if fmt == 'safetensors' else 'pt'}"
    if fmt == "safetensors":
        save_safetensors(state, path)
    else:
        torch.save(state, path, _use_new_zipfile_serialization=fmt == "pt")
    loaded = build_model(ModelSpec(architecture="digits_vgg", kwargs=TINY, weights=str(path)))
    assert not loaded.model.training
    _outputs_match(trained_like, loaded.model)


def test_safetensors_detected_by_magic_without_extension(
    tmp_path: Path, trained_like: torch.nn.Module
) -> None:
    path = tmp_path / "weights.bin"
    save_file({k: v.contiguous() for k, v in trained_like.state_dict().items()}, str(path))
    state = load_state_dict_file(path)
    assert set(state) == set(trained_like.state_dict())


@pytest.mark.parametrize(
    "wrap",
    [
        lambda s: {"state_dict": s, "epoch": 3},
        lambda s: {"model": s, "optimizer": {"lr": 0.1}},
        lambda s: {"state_dict": {f"module.{k}": v for k, v in s.items()}},
        lambda s: {f"module._orig_mod.{k}": v for k, v in s.items()},
    ],
)
def test_common_containers_unwrapped(tmp_path: Path, trained_like: torch.nn.Module, wrap) -> None:
    path = tmp_path / "wrapped.pt"
    torch.save(wrap(trained_like.state_dict()), path)
    state = load_state_dict_file(path)
    info = get_architecture("digits_vgg")
    fresh = load_weights(instantiate(info, info.effective_kwargs(TINY)), state)
    _outputs_match(trained_like, fresh)


def test_num_classes_taken_from_checkpoint(tmp_path: Path) -> None:
    info = get_architecture("digits_vgg")
    five = instantiate(info, info.effective_kwargs({**TINY, "num_classes": 5}))
    path = tmp_path / "five.safetensors"
    save_safetensors(five.state_dict(), path)
    loaded = build_model(ModelSpec(architecture="digits_vgg", kwargs=TINY, weights=str(path)))
    assert loaded.num_classes == 5 and loaded.kwargs["num_classes"] == 5
    with pytest.raises(InvalidModelError, match=r"num_classes: checkpoint 5 \(classifier rows\), model 10"):
        build_model(
            ModelSpec(architecture="digits_vgg", kwargs={**TINY, "num_classes": 10}, weights=str(path))
        )


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("zipped", [True, False])
def test_malicious_pickle_refused_without_running(tmp_path: Path, zipped: bool) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    payload = {"weight": torch.zeros(2), "x": _Exploit(marker)}
    if zipped:
        torch.save(payload, path)
    else:
        with path.open("wb") as handle:
            pickle.dump(payload, handle, protocol=2)
    assert not marker.exists()
    with pytest.raises(InvalidModelError, match="refused to unpickle"):
        load_state_dict_file(path)
    assert not marker.exists()
    # Sanity: the payload really does execute when unpickled unsafely.
    if not zipped:
        with path.open("rb") as handle:
            pickle.load(handle)
        assert marker.exists()


def test_pickled_module_refused(tmp_path: Path, trained_like: torch.nn.Module) -> None:
    path = tmp_path / "whole_model.pt"
    torch.save(trained_like, path)
    with pytest.raises(InvalidModelError, match="refused to unpickle"):
        load_state_dict_file(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidModelError, match="does not exist"):
        load_state_dict_file(tmp_path / "nope.safetensors")


def test_truncated_safetensors(tmp_path: Path, trained_like: torch.nn.Module) -> None:
    path = tmp_path / "cut.safetensors"
    save_safetensors(trained_like.state_dict(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InvalidModelError, match=r"cut\.safetensors.*safetensors"):
        load_state_dict_file(path)


def test_garbage_files(tmp_path: Path) -> None:
    for name, data in [
        ("junk.pt", os.urandom(256)),
        ("junk.safetensors", b"\x08" + b"\x00" * 7 + b"not json"),
        ("empty.pt", b""),
    ]:
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(InvalidModelError, match=name.replace(".", r"\.")):
            load_state_dict_file(path)


def test_non_tensor_values_refused(tmp_path: Path) -> None:
    path = tmp_path / "mixed.pt"
    torch.save({"a.weight": torch.zeros(2), "b": 3, "c": "text"}, path)
    with pytest.raises(InvalidModelError, match="not tensors") as err:
        load_state_dict_file(path)
    assert "'b'" in str(err.value) and "'c'" in str(err.value)


def test_not_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(InvalidModelError, match="expected a state dict"):
        load_state_dict_file(path)


def test_load_weights_names_every_kind_of_mismatch(trained_like: torch.nn.Module) -> None:
    state = dict(trained_like.state_dict())
    state.pop("features.0.weight")
    state["extra.weight"] = torch.zeros(1)
    state["classifier.3.bias"] = torch.zeros(3)
    info = get_architecture("digits_vgg")
    fresh = instantiate(info, info.effective_kwargs(TINY))
    with pytest.raises(InvalidModelError) as err:
        load_weights(fresh, state)
    message = str(err.value)
    assert "1 missing keys: ['features.0.weight']" in message
    assert "1 unexpected keys: ['extra.weight']" in message
    assert "classifier.3.bias: checkpoint (3,) vs model (10,)" in message


def test_wrong_architecture_checkpoint(tmp_path: Path, trained_like: torch.nn.Module) -> None:
    path = tmp_path / "vgg.safetensors"
    save_safetensors(trained_like.state_dict(), path)
    spec = ModelSpec(
        architecture="digits_resnet18", kwargs={"base_width": 4, "layers": [1, 1, 1, 1]}, weights=str(path)
    )
    with pytest.raises(InvalidModelError, match="missing keys"):
        build_model(spec)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("fmt", ["safetensors", "torch"])
def test_non_finite_weights_are_a_user_error(tmp_path: Path, trained_like, bad, fmt):
    state = {k: v.clone() for k, v in trained_like.state_dict().items()}
    first = next(k for k, v in state.items() if v.is_floating_point())
    state[first].view(-1)[0] = bad
    path = tmp_path / ("m.safetensors" if fmt == "safetensors" else "m.pt")
    if fmt == "safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    with pytest.raises(InvalidModelError, match="NaN or infinite"):
        load_state_dict_file(path)
