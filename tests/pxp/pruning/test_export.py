from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from pxp.components import find_layers, prepare_model
from pxp.errors import InvalidModelError, InvalidSpecError
from pxp.models import get_architecture, instantiate
from pxp.models.compressed import MANIFEST_NAME, WEIGHTS_NAME, load_compressed, read_manifest, sha256_file
from pxp.pruning.export import ONNX_NAME, TORCHSCRIPT_NAME, export_compressed
from pxp.pruning.ranking import rank
from pxp.pruning.removal import RemovalResult, remove_pruned

CASES = {
    "digits_vgg": {"widths": [8, 16, 24], "hidden": 32},
    "digits_resnet18": {"base_width": 8},
}


def randomize_bn(model: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.bias.copy_(torch.rand(m.num_features, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model


def removed(name: str, rate: float = 0.5) -> tuple[RemovalResult, dict, torch.Tensor]:
    info = get_architecture(name)
    kwargs = info.effective_kwargs(CASES[name])
    model = randomize_bn(instantiate(info, kwargs))
    prepared = prepare_model(model, "cnn")
    layers = find_layers(prepared, "cnn")
    torch.manual_seed(0)
    order = rank(layers, {layer.name: torch.rand(layer.size) for layer in layers})
    x = torch.randn(4, 1, 32, 32)
    return remove_pruned(prepared, "cnn", layers, order.keep_masks(rate), x), kwargs, x


def export(tmp_path: Path, name: str, **extra) -> tuple[RemovalResult, dict[str, Path], torch.Tensor]:
    result, kwargs, x = removed(name)
    paths = export_compressed(
        tmp_path / "compressed",
        result,
        x,
        architecture=name,
        family="cnn",
        kwargs=kwargs,
        class_names=[str(i) for i in range(10)],
        attribution={"criterion": "lrp", "composite": {"rules": {"low": {"name": "epsilon", "param": 1e-6}}}},
        metrics={"accuracy": 0.9, "unpruned_accuracy": float("nan")},
        rate=0.5,
        **extra,
    )
    return result, paths, x


@pytest.mark.parametrize("name", sorted(CASES))
def test_save_load_compressed_gives_the_same_logits(tmp_path: Path, name: str) -> None:
    result, paths, x = export(tmp_path, name)
    assert set(paths) == {"weights", "manifest"}
    loaded = load_compressed(tmp_path / "compressed")
    assert not loaded.training
    x = torch.randn(3, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), result.model(x))
    assert sum(p.numel() for p in loaded.parameters()) == result.params_after
    assert sorted(p.name for p in (tmp_path / "compressed").iterdir()) == sorted(
        [MANIFEST_NAME, WEIGHTS_NAME]
    )


@pytest.mark.parametrize("name", sorted(CASES))
def test_plain_pytorch_can_run_a_compressed_cnn_without_pxp(tmp_path: Path, name: str) -> None:
    """The README's snippet: the unpruned class + ``functional_call`` with the exported tensors.

    Conv, Linear and BatchNorm read their sizes from their tensors, so a CNN runs from
    ``model.safetensors`` alone; nothing from pxp is needed at load time.
    """
    from safetensors.torch import load_file
    from torch.func import functional_call

    result, paths, _ = export(tmp_path, name)
    manifest = json.loads(paths["manifest"].read_text())
    model = instantiate(get_architecture(manifest["architecture"]), manifest["kwargs"]).eval()
    x = torch.randn(3, 1, 32, 32)
    with torch.no_grad():
        got = functional_call(model, load_file(paths["weights"]), (x,), strict=True)
        assert torch.allclose(got, result.model(x), atol=1e-5)


def test_manifest_records_the_plan_and_provenance(tmp_path: Path) -> None:
    result, paths, _ = export(tmp_path, "digits_vgg")
    manifest = read_manifest(tmp_path / "compressed")
    assert manifest["family"] == "cnn" and manifest["architecture"] == "digits_vgg"
    assert manifest["kwargs"]["widths"] == [8, 16, 24] and manifest["kwargs"]["num_classes"] == 10
    assert manifest["class_names"] == [str(i) for i in range(10)]
    assert manifest["attribution"]["criterion"] == "lrp"
    assert manifest["metrics"] == {"accuracy": 0.9, "unpruned_accuracy": None}
    assert manifest["weights"]["sha256"] == sha256_file(paths["weights"])
    assert manifest["pruning"]["rate"] == 0.5
    for layer, kept in result.kept_indices.items():
        assert manifest["pruning"]["layers"][layer]["kept"] == kept
    assert manifest["modules"]["features.0"] == {
        "type": "Conv2d",
        "in_channels": 1,
        "out_channels": len(kept_of(result, "features.1")),
    }
    assert manifest["params"] == {"before": result.params_before, "after": result.params_after}
    assert manifest["input_shape"] == [1, 32, 32]


def kept_of(result: RemovalResult, layer: str) -> list[int]:
    return result.kept_indices[layer]


def test_onnx_and_torchscript_exports_match_pytorch(tmp_path: Path) -> None:
    import onnxruntime

    result, paths, _ = export(tmp_path, "digits_resnet18", formats=["safetensors", "onnx", "torchscript"])
    assert paths["onnx"].name == ONNX_NAME and paths["torchscript"].name == TORCHSCRIPT_NAME
    manifest = json.loads(paths["manifest"].read_text())
    assert manifest["exports"]["onnx"]["sha256"] == sha256_file(paths["onnx"])
    session = onnxruntime.InferenceSession(str(paths["onnx"]), providers=["CPUExecutionProvider"])
    x = torch.randn(5, 1, 32, 32)  # another batch size than the export's: the batch axis is dynamic
    (got,) = session.run(None, {"input": x.numpy()})
    with torch.no_grad():
        want = result.model(x).numpy()
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


def test_corrupted_weights_are_refused(tmp_path: Path) -> None:
    _, paths, _ = export(tmp_path, "digits_vgg")
    data = bytearray(paths["weights"].read_bytes())
    data[len(data) // 2] ^= 0xFF
    paths["weights"].write_bytes(bytes(data))
    with pytest.raises(InvalidModelError, match="sha256 does not match"):
        load_compressed(tmp_path / "compressed")


def test_truncated_weights_are_refused_even_without_the_hash_check(tmp_path: Path) -> None:
    _, paths, _ = export(tmp_path, "digits_vgg")
    data = paths["weights"].read_bytes()
    paths["weights"].write_bytes(data[: len(data) // 3])
    with pytest.raises(InvalidModelError, match="sha256 does not match"):
        load_compressed(tmp_path / "compressed")
    with pytest.raises(InvalidModelError, match="not a readable safetensors file"):
        load_compressed(tmp_path / "compressed", check_hash=False)


def test_manifest_that_does_not_fit_the_weights_is_refused(tmp_path: Path) -> None:
    _, paths, _ = export(tmp_path, "digits_vgg")
    manifest = json.loads(paths["manifest"].read_text())
    manifest["modules"]["features.0"]["out_channels"] += 1
    paths["manifest"].write_text(json.dumps(manifest))
    with pytest.raises(InvalidModelError, match="shape mismatches"):
        load_compressed(tmp_path / "compressed")
    manifest["modules"]["no.such.module"] = {"type": "Conv2d", "in_channels": 1, "out_channels": 1}
    paths["manifest"].write_text(json.dumps(manifest))
    with pytest.raises(InvalidModelError, match="does not have"):
        load_compressed(tmp_path / "compressed")


def test_missing_or_foreign_manifest_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidModelError, match=r"no manifest\.json"):
        load_compressed(tmp_path)
    (tmp_path / MANIFEST_NAME).write_text('{"format": "something-else"}')
    with pytest.raises(InvalidModelError, match="not a pxp compressed-model manifest"):
        load_compressed(tmp_path)


def test_unknown_export_format_is_refused(tmp_path: Path) -> None:
    result, kwargs, x = removed("digits_vgg")
    with pytest.raises(InvalidSpecError, match="unknown export format"):
        export_compressed(
            tmp_path,
            result,
            x,
            architecture="digits_vgg",
            family="cnn",
            kwargs=kwargs,
            class_names=[],
            formats=["tflite"],
        )
    assert not (tmp_path / MANIFEST_NAME).exists()
