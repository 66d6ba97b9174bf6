"""The sanity gate: a model at chance on the user's data is refused before any work."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from pxp import pipeline
from pxp.cli import _add_compress, build_spec, main
from pxp.errors import BaselineAccuracyError, UserError
from pxp.pipeline.sanity import chance_threshold
from pxp.spec import AttributionSpec, BaselineSpec, DataSpec, ExportSpec, JobSpec, ModelSpec, PruneSpec
from pxp.zoo import TINY_KWARGS

GOOD = ModelSpec(architecture="digits_vgg", kwargs=TINY_KWARGS["digits_vgg"])
#: A torchvision ResNet-18 with random weights: at chance on digits.
RANDOM = ModelSpec(architecture="resnet18", kwargs={"num_classes": 10})


def _spec(**overrides: object) -> JobSpec:
    base: dict[str, object] = dict(
        model=GOOD,
        criteria=[AttributionSpec(criterion="weight")],
        prune=PruneSpec(rates=[0.0, 0.5]),
        export=ExportSpec(enabled=False),
    )
    base.update(overrides)
    return JobSpec(**base)  # type: ignore[arg-type]


def test_a_trained_model_passes_the_gate() -> None:
    state = pipeline.build_state(_spec(), pipeline.silent())
    assert state.baseline is not None and state.baseline.passed
    assert state.baseline.accuracy > 0.8
    assert state.baseline.chance == pytest.approx(0.1, abs=0.01)


def test_wrong_normalisation_is_refused_with_the_numbers_and_what_to_try() -> None:
    spec = _spec(data=DataSpec(mean=(0.9,), std=(0.02,)))
    with pytest.raises(BaselineAccuracyError) as info:
        pipeline.build_state(spec, pipeline.silent())
    message = str(info.value)
    assert isinstance(info.value, UserError)
    assert "near chance (0.100" in message
    assert "image size 32" in message and "mean (0.9) (spec)" in message and "std (0.02) (spec)" in message
    assert "--image-size" in message and "--mean/--std" in message and "--allow-low-accuracy" in message


def test_random_weights_are_refused_by_the_cli_with_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["compress", "--model", "resnet18", "--model-kwargs", '{"num_classes": 10}', "--image-size", "32"]
    argv += ["--criterion", "weight", "--rates", "0,0.5", "--no-export", "--quiet", "--out", str(tmp_path)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "BaselineAccuracyError" in err and "image size 32 (spec)" in err
    assert not (tmp_path / "results.json").exists()


def test_the_override_runs_but_calls_no_rate_safe(tmp_path: Path) -> None:
    spec = _spec(
        model=RANDOM,
        data=DataSpec(image_size=32),
        baseline=BaselineSpec(allow_low_accuracy=True),
        prune=PruneSpec(rates=[0.0, 0.5], max_accuracy_drop=1.0),
    )
    result = pipeline.run(spec, tmp_path)
    assert result.curves[0].unpruned_accuracy <= chance_threshold(0.1)
    assert result.curves[0].safe_rate == 0.0
    assert result.chosen_rate == 0.0


def test_cli_mean_std_and_floor_reach_the_spec(tmp_path: Path) -> None:
    argv = ["compress", "--model", "digits_vgg", "--model-kwargs", '{"widths": [8, 16, 32]}']
    argv += ["--mean", "0.9", "--std", "0.02", "--min-unpruned-accuracy", "0.99", "--out", str(tmp_path)]
    parser = argparse.ArgumentParser()
    _add_compress(parser.add_subparsers(dest="command"))
    spec = build_spec(parser.parse_args(argv))
    assert spec.data.mean == (0.9,) and spec.data.std == (0.02,)
    assert spec.baseline.min_unpruned_accuracy == 0.99 and not spec.baseline.allow_low_accuracy


def test_a_floor_above_the_models_accuracy_is_refused() -> None:
    spec = _spec(baseline=BaselineSpec(min_unpruned_accuracy=0.999))
    with pytest.raises(BaselineAccuracyError, match=r"below the required minimum 0\.999"):
        pipeline.build_state(spec, pipeline.silent())
