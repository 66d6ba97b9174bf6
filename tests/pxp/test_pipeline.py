"""The whole local job on a tiny, really trained digits model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pxp import pipeline
from pxp.errors import InvalidDataError, JobCancelledError, UnsupportedArchitectureError
from pxp.pruning.curve import accuracy
from pxp.spec import AttributionSpec, ExportSpec, JobSpec, ModelSpec, ProgressEvent, PruneSpec
from pxp.zoo import TINY_KWARGS

RATES = [0.0, 0.25, 0.5, 0.75]


def _spec(**overrides) -> JobSpec:
    base = dict(
        model=ModelSpec(architecture="digits_vgg", kwargs=TINY_KWARGS["digits_vgg"]),
        criteria=[AttributionSpec(criterion="lrp"), AttributionSpec(criterion="random")],
        prune=PruneSpec(rates=RATES),
        export=ExportSpec(enabled=False),
    )
    base.update(overrides)
    return JobSpec(**base)


def test_pipeline_writes_curves_mask_and_plot(tmp_path: Path) -> None:
    events: list[ProgressEvent] = []
    result = pipeline.run(_spec(), tmp_path, events.append)

    assert [c.label for c in result.curves] == ["lrp", "random"]
    for c in result.curves:
        assert c.rates == RATES and len(c.accuracies) == len(RATES)
        assert c.apr == pytest.approx(sum(c.accuracies) / len(RATES))
        assert c.safe_rate in RATES
    assert result.curves[0].unpruned_accuracy > 0.8
    assert result.curves[0].unpruned_accuracy == result.curves[1].unpruned_accuracy

    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["curves"][0]["accuracies"] == result.curves[0].accuracies
    assert (tmp_path / "curves.png").stat().st_size > 1000
    mask = json.loads((tmp_path / "mask.json").read_text())
    assert mask["criterion"] == "lrp" and mask["rate"] == result.chosen_rate

    fractions = [e.fraction for e in events]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert {e.stage for e in events} >= {"load", "data", "attribution:lrp", "curve:lrp", "done"}


def test_unpruned_accuracy_is_the_models_test_accuracy(tmp_path: Path) -> None:
    spec = _spec(criteria=[AttributionSpec(criterion="weight")])
    report = pipeline.silent()
    state = pipeline.build_state(spec, report)
    x, y = state.test
    expected = accuracy(state.loaded.model, x, y)
    result = pipeline.run(spec, tmp_path)
    assert result.curves[0].unpruned_accuracy == pytest.approx(expected)
    split = state.splits
    sets = [set(split.reference.tolist()), set(split.search.tolist()), set(split.test.tolist())]
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])


def test_rerun_resumes_from_checkpointed_stages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = pipeline.run(_spec(), tmp_path)
    calls = {"scores": 0, "curve": 0}
    from pxp.pipeline import curves, scoring

    original_scores, original_curve = scoring.compute_scores, curves.masked_curve

    def counting_scores(*a, **k):
        calls["scores"] += 1
        return original_scores(*a, **k)

    def counting_curve(*a, **k):
        calls["curve"] += 1
        return original_curve(*a, **k)

    monkeypatch.setattr(scoring, "compute_scores", counting_scores)
    monkeypatch.setattr(curves, "masked_curve", counting_curve)
    second = pipeline.run(_spec(), tmp_path)
    assert calls == {"scores": 0, "curve": 0}
    assert second.curves == first.curves


def test_cancel_from_progress_callback_stops_the_job(tmp_path: Path) -> None:
    def cancel_at_attribution(event: ProgressEvent) -> None:
        if event.stage.startswith("attribution"):
            raise JobCancelledError("cancelled by user")

    with pytest.raises(JobCancelledError):
        pipeline.run(_spec(), tmp_path, cancel_at_attribution)
    assert not (tmp_path / "results.json").exists()


def test_user_errors_are_domain_errors(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedArchitectureError):
        pipeline.run(_spec(model=ModelSpec(architecture="no_such_net")), tmp_path)
    images = torch.randint(0, 255, (40, 1, 32, 32), dtype=torch.uint8)
    labels = torch.full((40,), 12, dtype=torch.int64)
    labels[:20] = 0
    from safetensors.torch import save_file

    save_file({"images": images, "labels": labels}, str(tmp_path / "data.safetensors"))
    with pytest.raises(InvalidDataError):
        pipeline.run(_spec(data={"source": str(tmp_path / "data.safetensors")}), tmp_path / "out")


def test_exported_checkpoint_reloads_with_the_reported_accuracy(tmp_path: Path) -> None:
    from pxp.models.compressed import load_compressed

    spec = _spec(
        criteria=[AttributionSpec(criterion="lrp")],
        prune=PruneSpec(rates=RATES, rate=0.25),
        export=ExportSpec(),
    )
    result = pipeline.run(spec, tmp_path)
    assert result.compression is not None
    assert result.compression["params_after"] < result.compression["params_before"]
    assert {"weights", "manifest", "mask", "results", "curves_png"} <= set(result.artifacts)
    model = load_compressed(tmp_path)
    state = pipeline.build_state(spec, pipeline.silent())
    x, y = state.test
    assert accuracy(model, x, y) == pytest.approx(result.compression["test_accuracy"])
    assert result.compression["test_accuracy"] == pytest.approx(
        result.curves[0].accuracies[RATES.index(0.25)]
    )


@pytest.mark.parametrize("name", ["meta", "cuda:99"])
def test_devices_that_cannot_run_a_job_are_user_errors(name):
    import torch

    from pxp.errors import InvalidSpecError
    from pxp.pipeline.state import resolve_device

    if name == "cuda:99" and not torch.cuda.is_available():
        name = "cuda:0"  # no CUDA at all: still a user error, not an internal one
    with pytest.raises(InvalidSpecError):
        resolve_device(name)
