"""The `pxp compress` command line on tiny, really trained digits models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pxp import pipeline
from pxp.cli import main
from pxp.pruning.curve import accuracy
from pxp.spec import AttributionSpec, JobSpec, ModelSpec, PruneSpec
from pxp.zoo import TINY_KWARGS


def test_cli_compress_writes_results(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "compress",
            "--model",
            "digits_vgg",
            "--model-kwargs",
            json.dumps(TINY_KWARGS["digits_vgg"]),
            "--criterion",
            "taylor",
            "--criterion",
            "weight",
            "--rates",
            "0,0.5",
            "--no-export",
            "--quiet",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "taylor" in out and "weight" in out
    assert json.loads((tmp_path / "results.json").read_text())["chosen_label"] == "taylor"


def test_cli_reports_user_errors_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["compress", "--model", "resnet999", "--quiet", "--out", str(tmp_path)])
    assert code == 2
    assert "UnsupportedArchitectureError" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("components", "extra"),
    [("heads", ()), ("neurons", ()), ("heads", ("--recovery", "least_squares"))],
)
def test_cli_compresses_a_vit_and_the_export_reloads(
    tmp_path: Path, components: str, extra: tuple[str, ...]
) -> None:
    from pxp.models.compressed import load_compressed

    kwargs = {**TINY_KWARGS["digits_vit"], "num_heads": 4}
    code = main(
        [
            "compress",
            "--model",
            "digits_vit",
            "--model-kwargs",
            json.dumps(kwargs),
            "--components",
            components,
            "--rates",
            "0,0.25,0.5",
            "--rate",
            "0.5",
            "--quiet",
            "--out",
            str(tmp_path),
            *extra,
        ]
    )
    assert code == 0
    results = json.loads((tmp_path / "results.json").read_text())
    compression = results["compression"]
    assert compression["recovery"] == (
        ["least_squares"] if extra else [] if components == "heads" else ["bn_reestimate", "least_squares"]
    )
    assert compression["params_after"] < compression["params_before"]
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["modules"], "nothing was physically removed"

    model = load_compressed(tmp_path)
    assert sum(p.numel() for p in model.parameters()) == compression["params_after"]
    spec = JobSpec(
        model=ModelSpec(architecture="digits_vit", kwargs=kwargs),
        criteria=[AttributionSpec(criterion="lrp")],
        prune=PruneSpec(rates=[0.0, 0.25, 0.5], components=components, rate=0.5),  # type: ignore[arg-type]
    )
    x, y = pipeline.build_state(spec, pipeline.silent()).test
    assert accuracy(model, x, y) == pytest.approx(compression["test_accuracy"])


def _compress_spec(*extra: str, model: str = "digits_vgg") -> JobSpec:
    import argparse

    from pxp.cli import _add_compress, build_spec

    parser = argparse.ArgumentParser()
    _add_compress(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["compress", "--model", model, "--out", "x", *extra])
    return build_spec(args)


@pytest.mark.parametrize(
    ("model", "extra", "recovery"),
    [
        ("digits_vit", (), []),  # heads by default: least squares measured worse there
        ("digits_vit", ("--components", "heads"), []),
        ("digits_vit", ("--components", "neurons"), ["bn_reestimate", "least_squares"]),
        ("timm/vit_tiny_patch16_224", (), []),
        ("timm/swin_tiny_patch4_window7_224", (), ["bn_reestimate", "least_squares"]),  # MLP neurons
        ("convnext_tiny", (), ["bn_reestimate", "least_squares"]),
        ("digits_resnet18", (), ["bn_reestimate", "least_squares"]),
        ("digits_vit", ("--recovery", "least_squares"), ["least_squares"]),
        ("resnet999", (), ["bn_reestimate", "least_squares"]),  # the job reports the unknown name
    ],
)
def test_compress_recovers_by_least_squares_except_on_vit_heads(
    model: str, extra: tuple[str, ...], recovery: list[str]
) -> None:
    assert _compress_spec(*extra, model=model).prune.recovery == recovery


def test_compress_defaults_to_the_measured_best_options_and_paper_restores_the_method() -> None:
    spec = _compress_spec()
    assert spec.prune.max_accuracy_drop == 0.01
    assert spec.prune.recovery == ["bn_reestimate", "least_squares"]
    assert spec.prune.coupled and spec.prune.cost_exponent == 1.0
    assert spec.export.measure_latency and spec.search is None
    paper = _compress_spec("--paper")
    assert paper.prune.recovery == [] and not paper.prune.coupled and paper.prune.cost_exponent == 0.0
    custom = _compress_spec(
        "--recovery", "least_squares,bn_reestimate", "--cost-exponent", "0", "--no-latency"
    )
    assert custom.prune.recovery == ["bn_reestimate", "least_squares"] and not custom.export.measure_latency
    budget = _compress_spec("--objective", "budget")
    assert budget.search is not None and budget.search.objective == "budget" and budget.search.trials == 1
    assert budget.search.budget_metric == "latency"
    assert _compress_spec("--objective", "budget", "--budget-metric", "macs").search.budget_metric == "macs"
    assert spec.prune.round_to == "auto" and paper.prune.round_to == 1
    assert _compress_spec("--round-to", "8").prune.round_to == 8


@pytest.mark.parametrize("value", ["0", "-4", "sixteen"])
def test_compress_refuses_a_bad_round_to(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        _compress_spec("--round-to", value)
    assert exit_info.value.code == 2
    assert "auto" in capsys.readouterr().err
