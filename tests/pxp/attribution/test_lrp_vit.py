"""AttnLRP on ViTs against its defining properties, on real torchvision / timm architectures."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn
from torchvision.models.vision_transformer import VisionTransformer
from zennit.core import Composite
from zennit.rules import Epsilon
from zennit.types import Activation

from pxp.attribution import ScoringContext, compute_scores
from pxp.attribution.attnlrp import (
    BilinearRule,
    LayerNormRule,
    LinearEpsilon,
    SoftmaxTaylorRule,
    SoftmaxZPlusRule,
)
from pxp.attribution.engine import backward_signals
from pxp.attribution.lrp_vit import build_vit_composite
from pxp.components import PrunableLayer, find_layers, prepare_model
from pxp.components.vit import explicit_blocks
from pxp.components.vit.modules import AttentionSoftmax, AttentionValues, QueryKeyScores
from pxp.spec import CRITERIA, VIT_GROUPS, AttributionSpec, CompositeSpec, RuleSpec
from tests.pxp.components.test_vit_convert import randomize, tiny_timm

TINY_EPS = 1e-12


def all_epsilon(softmax: str) -> CompositeSpec:
    return CompositeSpec(rules={g: RuleSpec(name="epsilon", param=1e-9) for g in VIT_GROUPS}, softmax=softmax)


def torchvision_vit(num_layers: int = 3) -> Any:
    torch.manual_seed(0)
    model = VisionTransformer(
        image_size=16,
        patch_size=4,
        num_layers=num_layers,
        num_heads=4,
        hidden_dim=32,
        mlp_dim=64,
        num_classes=10,
    )
    return randomize(model).double()


MODELS: dict[str, Callable[[], nn.Module]] = {
    "torchvision": torchvision_vit,
    "timm_avg_layerscale": lambda: tiny_timm(global_pool="avg", init_values=0.5).double(),
}


def _images(n: int = 3) -> torch.Tensor:
    return torch.randn(n, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(3))


def _zero_biases(model: nn.Module) -> nn.Module:
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Linear, nn.LayerNorm, nn.Conv2d)) and module.bias is not None:
                module.bias.zero_()
    return model


def _stream_points(prepared: nn.Module) -> list[PrunableLayer]:
    """Hook points on the residual stream: each block's output, and the module feeding the first block."""
    names = [name for name, _ in explicit_blocks(prepared)]
    before_blocks = "encoder.dropout" if names[0].startswith("encoder.") else "norm_pre"
    return [PrunableLayer(n, "fc2", 0, 2, n, "early", i) for i, n in enumerate([before_blocks, *names])]


@pytest.mark.parametrize("family", sorted(MODELS))
def test_conservation_with_zero_biases(family: str) -> None:
    """ε-LRP without biases keeps the output relevance (1 per sample) on every residual-stream cut.

    With CP-LRP every rule on the path is conservative. AttnLRP's softmax rule is not
    (its Taylor bias term absorbs relevance), nor is z+ for outputs with no positive
    contribution; their other rules are checked one by one below.
    """
    prepared = _zero_biases(prepare_model(MODELS[family](), "vit"))
    points = _stream_points(prepared)
    composite = build_vit_composite(prepared, all_epsilon("cp_lrp"), stabilizer=TINY_EPS)
    with composite.context(prepared) as model:
        _, relevance = backward_signals(model, points, _images(), torch.tensor([1, 4, 9]))
    for point in points:
        totals = relevance[point.name].sum(dim=(1, 2))
        assert torch.allclose(totals, torch.ones_like(totals), atol=1e-6), f"{point.name}: {totals}"


def _gradient_form(model: nn.Module, softmax: str) -> list[torch.utils.hooks.RemovableHandle]:
    """Forward hooks that make plain autograd compute AttnLRP's modified gradient.

    LayerNorm's std is detached, elementwise activations pass ``f(x)/x``, bilinear products
    give each input half of its gradient (CP-LRP: the attention is detached). The forward
    values are unchanged; gradient × input then equals ε→0 LRP (the AttnLRP paper's
    gradient formulation), an implementation independent of the zennit hooks.
    """

    def layer_norm(m: nn.LayerNorm, args: tuple, _out: torch.Tensor) -> torch.Tensor:
        x = args[0]
        centred = x - x.mean(-1, keepdim=True)
        std = (centred.pow(2).mean(-1, keepdim=True) + m.eps).sqrt()
        return centred / std.detach() * m.weight + m.bias

    def activation(_m: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
        x = args[0]
        ratio = torch.where(x == 0, torch.full_like(x, 0.5), out / torch.where(x == 0, torch.ones_like(x), x))
        return x * ratio.detach()

    def uniform(m: nn.Module, args: tuple, _out: torch.Tensor) -> torch.Tensor:
        a, b = args
        return 0.5 * (m.forward(a, b.detach()) + m.forward(a.detach(), b))

    def constant_attention(m: nn.Module, args: tuple, _out: torch.Tensor) -> torch.Tensor:
        a, b = args
        return m.forward(a.detach(), b)

    handles = []
    for module in model.modules():
        if isinstance(module, nn.LayerNorm):
            handles.append(module.register_forward_hook(layer_norm))
        elif isinstance(module, Activation):
            handles.append(module.register_forward_hook(activation))
        elif isinstance(module, QueryKeyScores):
            handles.append(module.register_forward_hook(uniform))
        elif isinstance(module, AttentionValues):
            hook = constant_attention if softmax == "cp_lrp" else uniform
            handles.append(module.register_forward_hook(hook))
    return handles


@pytest.mark.parametrize("softmax", ["attnlrp", "cp_lrp"])
@pytest.mark.parametrize("family", sorted(MODELS))
def test_all_epsilon_equals_gradient_times_input(family: str, softmax: str) -> None:
    """ε→0 relevance at every head / neuron / fc2 output = modified gradient × activation / gt logit, per sample."""
    prepared: Any = prepare_model(MODELS[family](), "vit")
    layers = [layer for kind in ("heads", "neurons", "fc2") for layer in find_layers(prepared, "vit", kind)]
    x, y = _images(), torch.tensor([0, 3, 7])
    with torch.no_grad():
        target_logit = prepared(x).gather(1, y[:, None]).squeeze(1)
    handles = _gradient_form(prepared, softmax)
    try:
        acts, grads = backward_signals(prepared, layers, x, y)
    finally:
        for handle in handles:
            handle.remove()
    composite = build_vit_composite(prepared, all_epsilon(softmax), stabilizer=TINY_EPS)
    with composite.context(prepared) as model:
        _, relevance = backward_signals(model, layers, x, y)
    for layer in layers:
        per_sample = target_logit.view(-1, *[1] * (acts[layer.name].dim() - 1))
        expected = acts[layer.name] * grads[layer.name] / per_sample
        rel_err = (relevance[layer.name] - expected).norm() / expected.norm()
        assert rel_err < 1e-6, f"{layer.name}: relative error {rel_err:.2e}"


def test_gradient_form_is_not_plain_gradient() -> None:
    """The reference above differs from plain gradient×input, so the equality test can fail."""
    prepared: Any = prepare_model(torchvision_vit(), "vit")
    layers = find_layers(prepared, "vit", "heads")[:1]
    x, y = _images(), torch.tensor([0, 3, 7])
    _, plain = backward_signals(prepared, layers, x, y)
    handles = _gradient_form(prepared, "attnlrp")
    _, modified = backward_signals(prepared, layers, x, y)
    for handle in handles:
        handle.remove()
    name = layers[0].name
    assert (plain[name] - modified[name]).norm() > 0.1 * plain[name].norm()


def _hooks(model: nn.Module) -> int:
    return sum(
        len(m._forward_hooks)
        + len(m._forward_pre_hooks)
        + len(m._backward_hooks)
        + len(m._backward_pre_hooks)
        for m in model.modules()
    )


@pytest.mark.parametrize("criterion", CRITERIA)
def test_every_criterion_scores_every_component_and_leaks_no_hooks(criterion: str) -> None:
    prepared: Any = prepare_model(tiny_timm(init_values=0.5), "vit")
    state = copy.deepcopy(prepared.state_dict())
    layers = [layer for kind in ("heads", "neurons", "fc2") for layer in find_layers(prepared, "vit", kind)]
    ctx = ScoringContext(prepared, "vit", layers, _images(4).float(), torch.tensor([0, 1, 2, 3]))
    spec = AttributionSpec(criterion=criterion, ig_steps=4, batch_size=2)
    first = compute_scores(ctx, spec)
    assert _hooks(prepared) == 0
    second = compute_scores(ctx, spec)
    for layer in layers:
        scores = first[layer.name]
        assert scores.shape == (layer.size,) and scores.dtype == torch.float64
        assert torch.isfinite(scores).all() and (scores >= 0).all() and scores.max() > 0
        assert torch.equal(scores, second[layer.name])
    assert all(torch.equal(v, state[k]) for k, v in prepared.state_dict().items())


def test_batched_scores_equal_per_sample_scores() -> None:
    prepared: Any = prepare_model(torchvision_vit(), "vit")
    layers = find_layers(prepared, "vit", "heads")
    ctx = ScoringContext(prepared, "vit", layers, _images(4), torch.tensor([0, 1, 2, 3]))
    batched = compute_scores(ctx, AttributionSpec(batch_size=4))
    single = compute_scores(ctx, AttributionSpec(batch_size=1))
    for layer in layers:
        assert torch.allclose(batched[layer.name], single[layer.name], rtol=1e-9)


def test_softmax_handling_changes_head_scores_and_cp_lrp_blocks_queries_keys() -> None:
    prepared: Any = prepare_model(torchvision_vit(), "vit")
    layers = find_layers(prepared, "vit", "heads")
    ctx = ScoringContext(prepared, "vit", layers, _images(), torch.tensor([0, 1, 2]))
    scores = {
        sm: compute_scores(ctx, AttributionSpec(composite=CompositeSpec(softmax=sm)))
        for sm in ("attnlrp", "attnlrp_zplus", "cp_lrp")
    }
    first = layers[0].name
    assert not torch.allclose(scores["attnlrp"][first], scores["cp_lrp"][first])
    assert not torch.allclose(scores["attnlrp"][first], scores["attnlrp_zplus"][first])
    query = PrunableLayer(
        "encoder.layers.encoder_layer_1.self_attention.q_proj", "fc2", 32, 2, "", "early", 0
    )
    for softmax, nonzero in (("cp_lrp", False), ("attnlrp", True)):
        with build_vit_composite(prepared, CompositeSpec(softmax=softmax)).context(prepared) as model:
            _, relevance = backward_signals(model, [query], _images(), torch.tensor([0, 1, 2]))
        assert bool(relevance[query.name].abs().sum() > 0) is nonzero


def test_composite_canonizes_an_unprepared_model_and_restores_it() -> None:
    model: Any = torchvision_vit().eval()
    state = copy.deepcopy(model.state_dict())
    blocks = list(model.encoder.layers)
    prepared: Any = prepare_model(model, "vit")
    spec = CompositeSpec(rules={"late": RuleSpec(name="gamma", param=0.1)}, softmax="attnlrp_zplus")
    layers = find_layers(prepared, "vit", "neurons")
    x, y = _images(), torch.tensor([2, 5, 8])
    with build_vit_composite(prepared, spec).context(prepared) as canonized:
        _, expected = backward_signals(canonized, layers, x, y)
    composite = build_vit_composite(model, spec)
    assert isinstance(composite, Composite)
    with composite.context(model) as canonized:
        _, relevance = backward_signals(canonized, layers, x, y)
    for layer in layers:
        assert torch.allclose(relevance[layer.name], expected[layer.name])
    assert list(model.encoder.layers) == blocks
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert _hooks(model) == 0


@pytest.mark.parametrize("rule", ["gamma", "alpha_beta", "zplus"])
def test_linear_rules_per_group_reach_the_components(rule: str) -> None:
    """Changing one group's rule changes relevance only for components upstream of that group."""
    prepared: Any = prepare_model(torchvision_vit(num_layers=3), "vit")
    layers = find_layers(prepared, "vit", "neurons")
    x, y = _images(), torch.tensor([0, 1, 2])

    def relevance(spec: CompositeSpec) -> dict[str, torch.Tensor]:
        with build_vit_composite(prepared, spec).context(prepared) as model:
            return backward_signals(model, layers, x, y)[1]

    base = relevance(CompositeSpec())
    changed = relevance(CompositeSpec(rules={"middle": RuleSpec(name=rule)}))
    early, middle, late = (layer.name for layer in layers)
    assert torch.equal(base[late], changed[late])
    assert not torch.allclose(base[early], changed[early])
    assert not torch.allclose(base[middle], changed[middle])
    assert torch.isfinite(changed[early]).all()


def _run_rule(
    rule: object, module: nn.Module, inputs: tuple[torch.Tensor, ...], relevance: torch.Tensor
) -> tuple:
    rule.stored_tensors = {"input": inputs, "output": module.forward(*inputs).detach()}  # type: ignore[attr-defined]
    return rule.backward(module, (None,) * len(inputs), (relevance,))  # type: ignore[attr-defined]


def _softmax_case() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 5, 7, dtype=torch.float64, generator=gen)
    s = x.softmax(-1)
    relevance = torch.randn(2, 3, 5, 7, dtype=torch.float64, generator=gen)
    jacobian = s[..., :, None] * (torch.eye(7, dtype=x.dtype) - s[..., None, :])  # [i, j] = ∂s_i/∂x_j
    return x, s, relevance, jacobian


def test_attnlrp_softmax_rule_is_input_times_jacobian() -> None:
    x, s, relevance, jacobian = _softmax_case()
    (result,) = _run_rule(SoftmaxTaylorRule(), AttentionSoftmax(), (x,), relevance)
    expected = x * torch.einsum("...ij,...i->...j", jacobian, relevance / s)
    assert torch.allclose(result, expected, atol=1e-12)
    assert not torch.allclose(result.sum(-1), relevance.sum(-1))


def test_softmax_zplus_rule_is_zplus_on_taylor_contributions() -> None:
    x, _s, relevance, jacobian = _softmax_case()
    contributions = (jacobian * x[..., None, :]).clamp(min=0)
    totals = contributions.sum(-1, keepdim=True)
    expected = (torch.where(totals > 0, contributions / totals, 0.0) * relevance[..., None]).sum(-2)
    (result,) = _run_rule(SoftmaxZPlusRule(stabilizer=TINY_EPS), AttentionSoftmax(), (x,), relevance)
    assert torch.allclose(result, expected, atol=1e-9)
    passing = totals[..., 0] > 0
    assert (~passing).any() and passing.any()
    assert torch.allclose(result.sum(-1), (relevance * passing).sum(-1), atol=1e-9)


@pytest.mark.parametrize("shares", [(0.5, 0.5), (0.0, 1.0)])
@pytest.mark.parametrize("module", [QueryKeyScores(0.3), AttentionValues()], ids=["qk", "av"])
def test_bilinear_rule_splits_and_conserves(module: nn.Module, shares: tuple[float, float]) -> None:
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(
        2, 3, 5, 4 if isinstance(module, QueryKeyScores) else 6, dtype=torch.float64, generator=gen
    )
    b = torch.randn(2, 3, 6, 4, dtype=torch.float64, generator=gen)
    relevance = torch.randn(2, 3, 5, 6 if isinstance(module, QueryKeyScores) else 4, dtype=torch.float64)
    rel_a, rel_b = _run_rule(BilinearRule(TINY_EPS, shares), module, (a, b), relevance)
    assert torch.allclose(rel_a.sum(), shares[0] * relevance.sum())
    assert torch.allclose(rel_b.sum(), shares[1] * relevance.sum())
    if shares[0] == 0:
        assert torch.equal(rel_a, torch.zeros_like(a))


def test_layer_norm_rule_is_epsilon_lrp_with_constant_std() -> None:
    gen = torch.Generator().manual_seed(2)
    norm = nn.LayerNorm(8, eps=1e-6).double()
    with torch.no_grad():
        norm.weight.copy_(1 + torch.randn(8, generator=gen, dtype=torch.float64))
        norm.bias.copy_(torch.randn(8, generator=gen, dtype=torch.float64))
    x = torch.randn(3, 5, 8, dtype=torch.float64, generator=gen)
    relevance = torch.randn(3, 5, 8, dtype=torch.float64, generator=gen)
    (result,) = _run_rule(LayerNormRule(TINY_EPS), norm, (x,), relevance)
    leaf = x.clone().requires_grad_()
    centred = leaf - leaf.mean(-1, keepdim=True)
    y = centred / (centred.pow(2).mean(-1, keepdim=True) + norm.eps).sqrt().detach() * norm.weight + norm.bias
    (grad,) = torch.autograd.grad(y, leaf, relevance / y.detach())
    assert torch.allclose(result, x * grad, atol=1e-9)
    with torch.no_grad():
        norm.bias.zero_()
    (unbiased,) = _run_rule(LayerNormRule(TINY_EPS), norm, (x,), relevance)
    assert torch.allclose(unbiased.sum(-1), relevance.sum(-1), atol=1e-9)


def test_linear_epsilon_equals_zennits_epsilon() -> None:
    """The stored-output ε-rule matches zennit's recomputing one, at a large ε where the stabiliser matters."""
    gen = torch.Generator().manual_seed(4)
    linear = nn.Linear(6, 5).double()
    x = torch.randn(3, 4, 6, dtype=torch.float64, generator=gen)
    relevance = torch.randn(3, 4, 5, dtype=torch.float64, generator=gen)
    results = []
    for rule in (LinearEpsilon(0.5), Epsilon(epsilon=0.5)):
        composite = Composite(module_map=lambda _ctx, _name, m, rule=rule: rule if m is linear else None)
        leaf = x.clone().requires_grad_()
        with composite.context(linear) as model:
            (grad,) = torch.autograd.grad(model(leaf), leaf, relevance)
        results.append(grad)
    assert torch.allclose(results[0], results[1], atol=1e-12)
    assert not torch.allclose(results[0], relevance @ linear.weight.detach())
