"""A job explains itself (provenance, heatmaps, report) and `pxp reproduce` rebuilds it exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from pxp import pipeline
from pxp.cli import main
from pxp.data import load_data
from pxp.errors import InvalidSpecError
from pxp.models import save_safetensors
from pxp.reproduce import reproduce
from pxp.spec import AttributionSpec, DataSpec, ExportSpec, JobSpec, ModelSpec, PruneSpec
from pxp.zoo import TINY_KWARGS, load_zoo_model

RATES = [0.0, 0.25, 0.5]


@pytest.fixture(scope="module")
def job_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One finished tiny job whose checkpoint and data are files (so both carry a sha256)."""
    root = tmp_path_factory.mktemp("job")
    model, _ = load_zoo_model("digits_vgg", TINY_KWARGS["digits_vgg"])
    save_safetensors(model.state_dict(), root / "model-in.safetensors")
    digits = load_data(DataSpec(source="digits"), image_size=32, channels=1)
    save_file({"images": digits.images, "labels": digits.labels}, str(root / "data.safetensors"))
    spec = JobSpec(
        model=ModelSpec(
            architecture="digits_vgg",
            kwargs=TINY_KWARGS["digits_vgg"],
            weights=str(root / "model-in.safetensors"),
        ),
        data=DataSpec(source=str(root / "data.safetensors")),
        criteria=[AttributionSpec(criterion="lrp"), AttributionSpec(criterion="weight")],
        prune=PruneSpec(rates=RATES, rate=0.25),
        export=ExportSpec(),
    )
    pipeline.run(spec, root / "out")
    return root


def test_provenance_names_versions_hashes_samples_and_choices(job_dir: Path) -> None:
    out = job_dir / "out"
    record = json.loads((out / "provenance.json").read_text())
    assert {"pxp", "torch", "torchvision", "zennit", "optuna"} <= set(record["versions"])
    assert record["device"]["type"] == "cpu"
    assert record["checkpoint"]["sha256"] and len(record["checkpoint"]["sha256"]) == 64
    assert record["data"]["sha256"] and record["data"]["tensor_sha256"]
    reference = record["samples"]["reference"]["indices"]
    assert len(reference) == 10 * 10  # 10 per class, 10 classes
    assert not set(reference) & set(record["samples"]["test"]["indices"])
    assert record["spec"]["splits"]["reference_samples_per_class"] == 10  # defaults filled in
    assert record["chosen"]["criterion"] == "lrp" and record["chosen"]["rate"] == 0.25
    mask = json.loads((out / "mask.json").read_text())
    assert record["kept_indices"] == mask["kept_indices"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["provenance"]["checkpoint"] == record["checkpoint"]


def test_explanations_and_report_are_artifacts(job_dir: Path) -> None:
    out = job_dir / "out"
    results = json.loads((out / "results.json").read_text())
    assert {"explanations", "heatmaps_png", "layers_png", "report", "provenance"} <= set(results["artifacts"])
    explanations = json.loads((out / "explanations.json").read_text())
    kept = {row["layer"]: row["kept"] for row in explanations["layers"]}
    mask = json.loads((out / "mask.json").read_text())
    assert kept == {name: len(idx) for name, idx in mask["kept_indices"].items()}
    assert len(explanations["heatmap_samples"]) == 10
    assert all(-1.0 <= c <= 1.0 for c in explanations["heatmap_change"])
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 3
    assert "Provenance" in page and "pxp reproduce" in page


def test_reproduce_is_identical_on_the_same_machine(
    job_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["reproduce", str(job_dir / "out"), "--quiet"]) == 0
    assert capsys.readouterr().out.startswith("identical")


def test_reproduce_names_what_differs(job_dir: Path, tmp_path: Path) -> None:
    tampered = tmp_path / "tampered"
    tampered.mkdir()
    for file in (job_dir / "out").iterdir():
        if file.is_file():
            (tampered / file.name).write_bytes(file.read_bytes())
    weights = load_file(str(tampered / "model.safetensors"))
    name = next(iter(weights))
    weights[name] = weights[name] + 1e-3
    save_file(weights, str(tampered / "model.safetensors"))
    record = json.loads((tampered / "provenance.json").read_text())
    layer = next(iter(record["kept_indices"]))
    record["kept_indices"][layer] = record["kept_indices"][layer][1:]
    (tampered / "provenance.json").write_text(json.dumps(record))

    report = reproduce(tampered)
    assert not report.identical
    text = "\n".join(report.differences)
    assert f"weight {name}: max |Δ| 0.001" in text
    assert f"kept indices of {layer}" in text


def test_reproduce_refuses_changed_inputs(job_dir: Path, tmp_path: Path) -> None:
    data = load_file(str(job_dir / "data.safetensors"))
    data["labels"] = torch.roll(data["labels"], 1)
    save_file(data, str(tmp_path / "other.safetensors"))
    with pytest.raises(InvalidSpecError, match="sha256"):
        reproduce(job_dir / "out", data=str(tmp_path / "other.safetensors"))
