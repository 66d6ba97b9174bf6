"""evaluate_curve: the product's one curve function is exactly masked_curve, whichever method it picks."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from pxp.attribution import ScoringContext, compute_scores
from pxp.components import find_layers, prepare_model
from pxp.data import load_data
from pxp.models import get_architecture
from pxp.pruning.curve import masked_curve
from pxp.pruning.evaluate import CurveInfo, evaluate_curve
from pxp.pruning.ranking import rank
from pxp.spec import AttributionSpec, DataSpec
from pxp.zoo import TINY_KWARGS, load_zoo_model
from tests.pxp.pruning.test_fast_curve import FACTORIES, SigmoidCNN, setup

RATES = [0.0, 0.2, 0.4, 0.6, 0.8, 0.9]


def _zoo_bed(name: str, components: str | None = None):
    """A really trained tiny zoo model, its LRP order, and 300 held-out digits."""
    model, _ = load_zoo_model(name, TINY_KWARGS[name])
    info = get_architecture(name)
    prepared = prepare_model(model, info.family)
    layers = find_layers(prepared, info.family, components)  # type: ignore[arg-type]
    data = load_data(DataSpec(), image_size=info.image_size, channels=info.input_channels)
    x = data.normalized(torch.arange(len(data)), info.mean, info.std)
    ref = torch.arange(0, 100)
    scores = compute_scores(
        ScoringContext(prepared, info.family, layers, x[ref], data.labels[ref]),
        AttributionSpec(batch_size=50),
    )
    return prepared, rank(layers, scores), x[100:400], data.labels[100:400]


@pytest.mark.parametrize(
    ("name", "components"),
    [("digits_vgg", None), ("digits_resnet18", None), ("digits_vit", "heads"), ("digits_vit", "neurons")],
)
def test_zoo_models_fast_equals_masked(name: str, components: str | None) -> None:
    prepared, order, x, y = _zoo_bed(name, components)
    info = CurveInfo()
    got = evaluate_curve(prepared, order, RATES, x, y, batch_size=128, info=info)
    assert got == masked_curve(prepared, order, RATES, x, y, batch_size=128)
    assert info.methods == ["fast"] * len(RATES), info.fallback_reason
    assert got[0] > 0.8 and min(got) < got[0]


@pytest.mark.parametrize("components", ["heads", "neurons"])
def test_a_vit_recovery_that_only_reestimates_bn_is_masking_so_its_curve_is_the_fast_sweep(
    components: str,
) -> None:
    """A ViT has no BatchNorm: BN re-estimation changes nothing, so the curve is the fast sweep's.

    Least squares does refit a ViT (``out_proj`` / ``fc2``): that curve is the recovered one.
    """
    from pxp.pruning.recovery import Recovery, recovered_curve

    prepared, order, x, y = _zoo_bed("digits_vit", components)
    x, y = x[:150], y[:150]
    recovery = Recovery(prepared, "vit", list(order.layers), x[:40], ["bn_reestimate"])
    info = CurveInfo()
    got = evaluate_curve(prepared, order, RATES, x, y, batch_size=64, recovery=recovery, info=info)
    assert info.methods == ["fast"] * len(RATES), info.fallback_reason
    assert got == recovered_curve(recovery, order, RATES, x, y, batch_size=64)
    assert got == masked_curve(prepared, order, RATES, x, y, batch_size=64)
    refit = Recovery(prepared, "vit", list(order.layers), x[:40], ["least_squares", "bn_reestimate"])
    info = CurveInfo()
    got = evaluate_curve(prepared, order, RATES, x, y, batch_size=64, recovery=refit, info=info)
    assert "fast" not in info.methods
    assert got == recovered_curve(refit, order, RATES, x, y, batch_size=64)


def test_rates_in_any_order_and_the_callback_sees_each_once() -> None:
    prepared, order, x, y = setup(FACTORIES["resnet"], protect_first=True)
    rates = [0.9, 0.4, 0.0, 0.8, 0.2]
    seen: list[tuple[int, float, float]] = []
    got = evaluate_curve(prepared, order, rates, x, y, batch_size=16, on_rate=lambda *a: seen.append(a))
    assert got == masked_curve(prepared, order, rates, x, y, batch_size=16)
    assert seen == [(i, r, a) for i, (r, a) in enumerate(zip(rates, got, strict=True))]


def test_a_model_the_fast_sweep_refuses_is_evaluated_by_masking() -> None:
    prepared, order, x, y = setup(SigmoidCNN)
    info = CurveInfo()
    assert evaluate_curve(prepared, order, RATES, x, y, info=info) == masked_curve(
        prepared, order, RATES, x, y
    )
    assert info.methods == ["masked"] * len(RATES)
    assert info.fallback_reason is not None and "VerificationError" in info.fallback_reason


def test_masked_method_and_transforms_force_the_reference_path() -> None:
    prepared, order, x, y = setup(FACTORIES["vgg"], n=16)
    reference = masked_curve(prepared, order, RATES, x, y)
    info = CurveInfo()
    assert evaluate_curve(prepared, order, RATES, x, y, method="masked", info=info) == reference
    assert info.methods == ["masked"] * len(RATES)

    # A transform sees the masked model and its keep masks; what it returns is what is evaluated.
    calls: list[int] = []

    def copy_masked(model: nn.Module, keep: dict[str, torch.Tensor]) -> nn.Module:
        calls.append(sum(int(m.sum()) for m in keep.values()))
        return copy.deepcopy(model)  # the masks' hooks travel with the copy

    info = CurveInfo()
    assert evaluate_curve(prepared, order, RATES, x, y, transform=copy_masked, info=info) == reference
    assert info.methods == ["masked"] * len(RATES) and calls == sorted(calls, reverse=True)

    label = int(y[0])
    biased = evaluate_curve(
        prepared,
        order,
        RATES,
        x,
        torch.full_like(y, label),
        transform=lambda m, k: _always(label),
    )
    assert biased == [1.0] * len(RATES)


class _Always(nn.Module):
    def __init__(self, label: int) -> None:
        super().__init__()
        self.label = label

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(len(x), 10)
        out[:, self.label] = 1.0
        return out


def _always(label: int) -> nn.Module:
    return _Always(label)


class _Stop(Exception):
    pass


def test_exceptions_from_on_rate_propagate_and_stop_the_curve() -> None:
    prepared, order, x, y = setup(FACTORIES["vgg"], n=16)
    seen: list[int] = []

    def stop_at_second(i: int, _rate: float, _acc: float) -> None:
        seen.append(i)
        if i == 1:
            raise _Stop

    with pytest.raises(_Stop):
        evaluate_curve(prepared, order, RATES, x, y, on_rate=stop_at_second)
    assert seen == [0, 1]  # not retried by masking after the callback stopped it


@pytest.mark.parametrize("name", ["digits_resnet18", pytest.param("digits_vgg", marks=pytest.mark.slow)])
def test_recovered_curve_staged_equals_the_unstaged_reference(name: str) -> None:
    """With recovery, the fast (staged) method refits bitwise the same weights and gives the same curve."""
    from pxp.pruning.recovery import Recovery, recovered_curve

    prepared, order, x, y = _zoo_bed(name)
    x, y = x[:150], y[:150]
    recovery = Recovery(prepared, "cnn", list(order.layers), x[:40], ["least_squares", "bn_reestimate"])
    rates = [0.7, 0.4, 0.4, 0.0]
    info = CurveInfo()
    got = evaluate_curve(prepared, order, rates, x, y, batch_size=128, recovery=recovery, info=info)
    assert not recovery.changes_nothing
    assert info.methods[2] == "recovered-staged (repeat)"
    assert {m.split(" ")[0] for m in info.methods} == {"recovered-staged"}
    assert recovery._stages is not None and recovery._call_at, "the captures were not staged"
    assert got == recovered_curve(recovery, order, rates, x, y, batch_size=128)  # the unstaged reference
    assert got != masked_curve(prepared, order, rates, x, y, batch_size=128)
    keep = order.keep_masks(0.7)
    states = []
    for staged in (True, False):
        recovery.staged = staged
        with recovery.applied(keep) as model:
            states.append({k: v.clone() for k, v in model.state_dict().items()})
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
