"""Write a removed model as ``model.safetensors`` + ``manifest.json`` (+ optional ONNX / TorchScript).

The directory reloads with :func:`pxp.models.load_compressed` (JSON + safetensors,
no pickle). Files are written to a staging directory and moved in at the end,
manifest last, so a directory holding a manifest is complete. Every export is
checked before it is kept: the reloaded safetensors model must reproduce the
removed model's logits, and ONNX (run by onnxruntime) / TorchScript must match
PyTorch within the removal tolerance; otherwise :class:`VerificationError`.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pxp.components import Family
from pxp.errors import InvalidSpecError, PxpError, UnsupportedArchitectureError, VerificationError
from pxp.hashing import sha256_file
from pxp.models.checkpoint import save_safetensors
from pxp.models.compressed import (
    MANIFEST_FORMAT,
    MANIFEST_NAME,
    MANIFEST_VERSION,
    WEIGHTS_NAME,
    load_compressed,
)
from pxp.pruning.removal import RemovalResult

ONNX_NAME = "model.onnx"
TORCHSCRIPT_NAME = "model.torchscript.pt"
FORMATS = ("safetensors", "onnx", "torchscript")
#: ONNX Runtime and TorchScript reorder float32 arithmetic; they must agree with PyTorch to this (relative to max |logit|).
EXPORT_RTOL = 1e-4
EXPORT_ATOL = 1e-5


def jsonable(value: Any) -> Any:
    """``value`` with tuples as lists, tensors as lists and non-finite floats as None (strict JSON)."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return jsonable(value.tolist())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, str | int | bool):
        return value
    if hasattr(value, "model_dump"):
        return jsonable(value.model_dump())
    return str(value)


def _check(name: str, want: torch.Tensor, got: torch.Tensor) -> float:
    diff = float((want - got).abs().max()) if want.shape == got.shape else math.inf
    bound = EXPORT_ATOL + EXPORT_RTOL * float(want.abs().max())
    if not diff <= bound:
        raise VerificationError(f"{name} export differs from PyTorch by {diff:.3g} (tolerance {bound:.3g})")
    return diff


def _export_onnx(model: nn.Module, x: torch.Tensor, path: Path, want: torch.Tensor) -> float:
    import onnxruntime

    # nn.MultiheadAttention's inference fast path is a fused op with no ONNX symbolic.
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            _onnx_export(model, x, path)
        finally:
            torch.backends.mha.set_fastpath_enabled(fastpath)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(None, {"input": x.numpy()})[0])
    return _check("ONNX", want, got)


def _onnx_export(model: nn.Module, x: torch.Tensor, path: Path) -> None:
    torch.onnx.export(
        model,
        (x,),
        str(path),
        dynamo=False,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        opset_version=17,
    )


def _export_torchscript(model: nn.Module, x: torch.Tensor, path: Path, want: torch.Tensor) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, (x,), check_trace=False)
        traced.save(str(path))
        reloaded = torch.jit.load(str(path), map_location="cpu")
    with torch.no_grad():
        got = reloaded(x)
    return _check("TorchScript", want, got)


def build_manifest(
    removal: RemovalResult,
    *,
    architecture: str,
    family: Family,
    kwargs: Mapping[str, Any],
    class_names: Iterable[str],
    attribution: Mapping[str, Any],
    metrics: Mapping[str, Any],
    input_shape: Iterable[int],
    rate: float | None = None,
    provenance: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Everything about the compressed model except the weights' hash and the optional exports."""
    layers = {
        name: {
            "kept": kept,
            "removed": removal.plan.removed.get(name, []),
            "zeroed": removal.plan.zeroed.get(name, []),
        }
        for name, kept in removal.kept_indices.items()
    }
    return {
        "format": MANIFEST_FORMAT,
        "version": MANIFEST_VERSION,
        "family": family,
        "architecture": architecture,
        "kwargs": jsonable(dict(kwargs)),
        "modules": jsonable(removal.modules),
        "input_shape": [int(d) for d in input_shape],
        "class_names": [str(c) for c in class_names],
        "pruning": {
            "rate": rate,
            "removed_components": removal.removed_components,
            "zeroed_components": removal.zeroed_components,
            "layers": layers,
        },
        "params": {"before": removal.params_before, "after": removal.params_after},
        "verification": {"max_abs_diff": removal.max_abs_diff, "tolerance": removal.tolerance},
        "attribution": jsonable(dict(attribution)),
        "metrics": jsonable(dict(metrics)),
        "provenance": jsonable(dict(provenance)) if provenance is not None else None,
    }


def export_compressed(
    out_dir: str | Path,
    removal: RemovalResult,
    x: torch.Tensor,
    *,
    architecture: str,
    family: Family,
    kwargs: Mapping[str, Any],
    class_names: Iterable[str],
    attribution: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    formats: Iterable[str] = ("safetensors",),
    rate: float | None = None,
    check_reload: bool = True,
    provenance: Mapping[str, Any] | None = None,
) -> dict[str, Path]:
    """Write the removed model to ``out_dir``; return ``{artifact name: path}``.

    ``x`` is a small batch of inputs (a few samples suffice): it fixes the input
    shape recorded in the manifest and checks every export. ``architecture`` /
    ``kwargs`` must rebuild the *unpruned* model through the registry
    (:func:`pxp.models.get_architecture`); the manifest's ``modules`` resize it.
    Existing files of the same names in ``out_dir`` are replaced.
    """
    formats = list(dict.fromkeys(formats))
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        raise InvalidSpecError(f"unknown export format(s) {unknown}; known: {list(FORMATS)}")
    model = removal.model.eval()
    x = x[: min(len(x), 4)].detach().to("cpu")
    with torch.no_grad():
        want = model(x)
    manifest = build_manifest(
        removal,
        architecture=architecture,
        family=family,
        kwargs=kwargs,
        class_names=class_names,
        attribution=attribution or {},
        metrics=metrics or {},
        input_shape=x.shape[1:],
        rate=rate,
        provenance=provenance,
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=out_dir))
    try:
        weights = staging / WEIGHTS_NAME
        save_safetensors(
            model.state_dict(), weights, metadata={"format": MANIFEST_FORMAT, "architecture": architecture}
        )
        manifest["weights"] = {
            "file": WEIGHTS_NAME,
            "sha256": sha256_file(weights),
            "bytes": weights.stat().st_size,
        }
        exports: dict[str, Any] = {}
        if "onnx" in formats:
            try:
                diff = _export_onnx(model, x, staging / ONNX_NAME, want)
            except PxpError:
                raise
            except Exception as exc:  # torch.onnx cannot trace some models (timm EVA's attention)
                raise UnsupportedArchitectureError(
                    f"{architecture} cannot be exported to ONNX: torch.onnx failed with "
                    f"{type(exc).__name__}: {str(exc)[:300]}. Leave 'onnx' out of the export formats."
                ) from exc
            exports["onnx"] = {
                "file": ONNX_NAME,
                "sha256": sha256_file(staging / ONNX_NAME),
                "max_abs_diff": diff,
            }
        if "torchscript" in formats:
            diff = _export_torchscript(model, x, staging / TORCHSCRIPT_NAME, want)
            exports["torchscript"] = {
                "file": TORCHSCRIPT_NAME,
                "sha256": sha256_file(staging / TORCHSCRIPT_NAME),
                "max_abs_diff": diff,
            }
        manifest["exports"] = exports
        (staging / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1, allow_nan=False))
        if check_reload:
            with torch.no_grad():
                got = load_compressed(staging)(x)
            manifest["verification"]["reload_max_abs_diff"] = _check("safetensors reload", want, got)
            (staging / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1, allow_nan=False))
        for stale in (ONNX_NAME, TORCHSCRIPT_NAME):
            if stale not in {v["file"] for v in exports.values()}:
                (out_dir / stale).unlink(missing_ok=True)
        paths: dict[str, Path] = {}
        names = {
            "weights": WEIGHTS_NAME,
            **{k: v["file"] for k, v in exports.items()},
            "manifest": MANIFEST_NAME,
        }
        for key, file_name in names.items():
            os.replace(staging / file_name, out_dir / file_name)
            paths[key] = out_dir / file_name
        return paths
    finally:
        shutil.rmtree(staging, ignore_errors=True)
