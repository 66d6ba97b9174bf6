"""Train-free recovery: each transform against its defining property; state restored afterwards."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pxp.components import PrunableLayer, find_layers, prepare_model
from pxp.models.digits import digits_resnet18, digits_vgg
from pxp.pruning.masking import masked
from pxp.pruning.ranking import rank
from pxp.pruning.recovery import Recovery, recovered_curve
from pxp.pruning.removal import remove_pruned
from pxp.spec import ComponentKind
from tests.pxp.pruning.test_removal_cnn import randomize


def _vgg() -> tuple[nn.Module, list, torch.Tensor]:
    model = randomize(digits_vgg(widths=(8, 16, 16), convs_per_stage=1, hidden=24), seed=1)
    prepared = prepare_model(model, "cnn")
    layers = find_layers(prepared, "cnn", "filters")
    x = torch.randn(40, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    return prepared, layers, x


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _half(layers: list, only: str | None = None) -> dict[str, torch.Tensor]:
    keep = {}
    for layer in layers:
        mask = torch.ones(layer.size, dtype=torch.bool)
        if only is None or layer.name == only:
            mask[::2] = False
        keep[layer.name] = mask
    return keep


def test_bn_reestimate_makes_running_stats_the_masked_inputs_statistics() -> None:
    prepared, layers, x = _vgg()
    before = _state(prepared)
    keep = _half(layers)
    recovery = Recovery(prepared, "cnn", layers, x, ["bn_reestimate"])
    seen: dict[str, torch.Tensor] = {}
    with recovery.applied(keep) as model:
        bns = {n: m for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
        stats = {n: (m.running_mean.clone(), m.running_var.clone()) for n, m in bns.items()}
        hooks = [
            m.register_forward_pre_hook(lambda _m, i, n=n: seen.__setitem__(n, i[0].detach()))
            for n, m in bns.items()
        ]
        # BN normalises with batch statistics during re-estimation: do the same to check.
        for m in bns.values():
            m.train()
        with torch.no_grad():
            model(x)
        for m in bns.values():
            m.eval()
        for h in hooks:
            h.remove()
    for name, (mean, var) in stats.items():
        got = seen[name]
        assert torch.allclose(mean, got.mean(dim=(0, 2, 3)), atol=1e-5)
        assert torch.allclose(var, got.var(dim=(0, 2, 3), unbiased=True), rtol=1e-4, atol=1e-5)
    after = _state(prepared)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not prepared._forward_hooks and all(not m._forward_hooks for m in prepared.modules())


def test_mean_fold_restores_the_consumers_mean_output_for_a_linear_consumer() -> None:
    prepared, layers, x = _vgg()
    last = layers[-1].name  # feeds the classifier's first Linear through flatten: no padding
    keep = _half(layers, only=last)
    linear = next(m for m in prepared.modules() if isinstance(m, nn.Linear))
    outputs: list[torch.Tensor] = []
    handle = linear.register_forward_hook(lambda _m, _i, o: outputs.append(o.detach()))
    with torch.no_grad():
        prepared(x)
        with masked(prepared, layers, keep):
            prepared(x)
        recovery = Recovery(prepared, "cnn", layers, x, ["mean_fold"])
        with recovery.applied(keep) as model:
            model(x)
    handle.remove()
    full, plain, folded = (o.mean(0) for o in (outputs[0], outputs[1], outputs[-1]))
    assert not torch.allclose(full, plain, atol=1e-3)
    assert torch.allclose(full, folded, atol=1e-4)


@pytest.mark.parametrize(
    "methods",
    [["bn_reestimate"], ["mean_fold"], ["least_squares"], ["mean_fold", "least_squares", "bn_reestimate"]],
)
@pytest.mark.parametrize("arch", ["vgg", "resnet"])
def test_removed_model_equals_the_recovered_masked_model(methods: list[str], arch: str) -> None:
    if arch == "vgg":
        prepared, layers, x = _vgg()
    else:
        model = randomize(digits_resnet18(base_width=4, layers=(1, 1, 1, 1)), seed=2)
        prepared = prepare_model(model, "cnn")
        layers = find_layers(prepared, "cnn", "filters")
        x = torch.randn(24, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(3)
    order = rank(layers, {layer.name: torch.rand(layer.size, generator=g) for layer in layers})
    keep = order.keep_masks(0.5)
    recovery = Recovery(prepared, "cnn", layers, x, methods)
    source = recovery.recovered_model(keep)
    with torch.no_grad(), recovery.applied(keep) as model:
        want = model(x)
    with torch.no_grad(), masked(source, layers, keep):
        assert torch.allclose(source(x), want, atol=1e-5)
    removal = remove_pruned(source, "cnn", layers, keep, x)
    with torch.no_grad():
        assert torch.allclose(removal.model(x), want, rtol=1e-4, atol=1e-5)
    # The curve evaluates the same recovered model at each rate.
    y = want.argmax(-1)
    assert recovered_curve(recovery, order, [0.5], x, y) == [1.0]


def _consumer_outputs(
    prepared: nn.Module,
    family: str,
    layers: list,
    x: torch.Tensor,
    keep: dict[str, torch.Tensor],
    consumer: nn.Module,
    methods: tuple[str, ...] = ("mean_fold", "least_squares"),
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """``consumer``'s output on ``x``: unpruned, masked, and masked + recovered by each method alone."""
    outputs: list[torch.Tensor] = []
    handle = consumer.register_forward_hook(lambda _m, _i, o: outputs.append(o.detach()))
    try:
        with torch.no_grad():
            prepared(x)
            full = outputs[-1]
            with masked(prepared, layers, keep):
                prepared(x)
            plain = outputs[-1]
            recovered = {}
            for method in methods:
                recovery = Recovery(prepared, family, layers, x, [method])  # type: ignore[arg-type]
                with recovery.applied(keep) as model:
                    model(x)
                recovered[method] = outputs[-1]
    finally:
        handle.remove()
    return full, plain, recovered


def _error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).pow(2).mean())


def test_least_squares_fits_the_consumer_to_its_unpruned_output() -> None:
    prepared, layers, x = _vgg()
    first = layers[0].name
    keep = _half(layers, only=first)
    consumer = next(m for m in prepared.modules() if isinstance(m, nn.Conv2d) and m.in_channels == 8)
    full, plain, recovered = _consumer_outputs(prepared, "cnn", layers, x, keep, consumer)
    errors = {method: _error(out, full) for method, out in recovered.items()}
    assert errors["least_squares"] < errors["mean_fold"] < _error(plain, full)


@pytest.mark.parametrize("stride,padding,dilation", [(1, 1, 1), (2, 1, 1), (1, 2, 2), (2, 0, 1)])
def test_sampled_patches_are_the_im2col_rows(stride: int, padding: int, dilation: int) -> None:
    prepared, layers, x = _vgg()
    recovery = Recovery(prepared, "cnn", layers, x[:3], ["least_squares"], max_rows=30)
    conv = torch.nn.Conv2d(4, 5, 3, stride=stride, padding=padding, dilation=dilation)
    inp = torch.randn(3, 4, 11, 9, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = conv(inp)
        design, target = recovery._rows(conv, inp, out, first=0)
        cols = torch.nn.functional.unfold(inp, 3, dilation=dilation, padding=padding, stride=stride)
    positions = [recovery._positions(b, out.shape[2] * out.shape[3]) for b in range(3)]
    want = torch.cat([cols[b][:, p].T for b, p in enumerate(positions)])
    assert torch.equal(design, want)
    flat = conv.weight.reshape(5, -1)
    assert torch.allclose(design @ flat.T + conv.bias, target, atol=1e-5)
    # The batched gather (staged) and the per-sample loop (unstaged) give bitwise the same rows.
    recovery.staged = False
    with torch.no_grad():
        loop_design, loop_target = recovery._rows(conv, inp, out, first=0)
    assert torch.equal(loop_design, design) and torch.equal(loop_target, target)


def test_token_rows_are_every_token_until_the_row_budget_then_sampled_tokens() -> None:
    """A Linear on (B, T, F): every token of every sample, or ⌈max_rows / samples⌉ drawn per sample."""
    prepared, layers, x = _vgg()
    linear = nn.Linear(6, 4)
    tokens = torch.randn(3, 7, 6, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = linear(tokens)
        everything = Recovery(prepared, "cnn", layers, x[:3], ["least_squares"], max_rows=21)
        design, target = everything._rows(linear, tokens, out, first=0)
        assert torch.equal(design, tokens.reshape(-1, 6)) and torch.equal(target, out.reshape(-1, 4))
        sampled = Recovery(prepared, "cnn", layers, x[:3], ["least_squares"], max_rows=9)
        design, target = sampled._rows(linear, tokens, out, first=5)
    positions = [sampled._positions(5 + b, 7) for b in range(3)]
    assert all(len(p) == 3 for p in positions) and len({tuple(p.tolist()) for p in positions}) > 1
    assert torch.equal(design, torch.cat([tokens[b, p] for b, p in enumerate(positions)]))
    assert torch.equal(target, torch.cat([out[b, p] for b, p in enumerate(positions)]))


def test_least_squares_refits_the_consumers_of_a_pruned_residual_stream() -> None:
    """Coupled ranking prunes residual-stream channels in every producer: their consumers are refitted."""
    from pxp.pruning.coupling import component_graph, rank_with_cost

    model = randomize(digits_resnet18(base_width=4, layers=(1, 1, 1, 1)), seed=2)
    prepared = prepare_model(model, "cnn")
    layers = find_layers(prepared, "cnn", "filters")
    x = torch.randn(48, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(3)
    scores = {layer.name: torch.rand(layer.size, generator=g) for layer in layers}
    graph = component_graph(prepared, "cnn", layers, x[:1])
    order = rank_with_cost(layers, scores, graph, coupled=True)
    # Prune one residual-stream channel of layer1 (stem bn1 and layer1.0.bn2 together) and nothing else.
    keep = {layer.name: torch.ones(layer.size, dtype=torch.bool) for layer in layers}
    for name in ("bn1", "layer1.0.bn2"):
        keep[name][1] = False
    consumer = prepared.get_submodule("layer1.0.conv1")
    full, plain, refit = _consumer_outputs(prepared, "cnn", layers, x, keep, consumer, ("least_squares",))
    assert _error(refit["least_squares"], full) < 0.5 * _error(plain, full)
    recovery = Recovery(prepared, "cnn", layers, x, ["least_squares"])
    # A stream channel only one producer pruned still carries the other's signal: nothing to refit.
    partial = {name: mask.clone() for name, mask in keep.items()}
    partial["bn1"][1] = True
    before = consumer.weight.detach().clone()
    with torch.no_grad(), recovery.applied(partial):
        assert torch.equal(consumer.weight, before)
    # The exported model is the recovered masked model, at a coupled ranking's rate too.
    keep = order.keep_masks(0.5)
    source = recovery.recovered_model(keep)
    with torch.no_grad(), recovery.applied(keep) as recovered:
        want = recovered(x)
    removal = remove_pruned(source, "cnn", layers, keep, x)
    with torch.no_grad():
        assert torch.allclose(removal.model(x), want, rtol=1e-4, atol=1e-5)


def _vit(key: str, kind: ComponentKind) -> tuple[nn.Module, list[PrunableLayer], torch.Tensor]:
    from tests.pxp.pruning.test_removal_vit import SIDE, build

    model, _, _ = build(key)
    prepared = prepare_model(model, "vit")
    layers = find_layers(prepared, "vit", kind)
    side = SIDE[key]
    # Enough rows (tokens × samples) for least squares: at least twice a consumer's fan-in + 1.
    samples = 24 if key == "torchvision" else 192
    x = torch.randn(samples, 1, side, side, generator=torch.Generator().manual_seed(0))
    return prepared, layers, x


def _vit_consumer(prepared: nn.Module, layer: PrunableLayer) -> nn.Linear:
    """The Linear reading ``layer``'s components: the attention's out_proj or the MLP's fc2."""
    if layer.kind == "heads":
        module = prepared.get_submodule(f"{layer.producer}.out_proj")
    else:
        mlp = prepared.get_submodule(layer.producer.rpartition(".")[0])
        module = [m for m in mlp.children() if isinstance(m, nn.Linear)][1]
    assert isinstance(module, nn.Linear)
    return module


@pytest.mark.parametrize("methods", [["least_squares"], ["mean_fold"], ["mean_fold", "least_squares"]])
@pytest.mark.parametrize("kind", ["heads", "neurons"])
@pytest.mark.parametrize("key", ["torchvision", "timm"])
def test_removed_vit_equals_the_recovered_masked_vit(
    methods: list[str], kind: ComponentKind, key: str
) -> None:
    prepared, layers, x = _vit(key, kind)
    g = torch.Generator().manual_seed(3)
    order = rank(layers, {layer.name: torch.rand(layer.size, generator=g) for layer in layers})
    keep = order.keep_masks(0.5)
    before = _state(prepared)
    recovery = Recovery(prepared, "vit", layers, x, methods)
    source = recovery.recovered_model(keep)
    # Every consumer of a pruned head / neuron was refitted (or folded); the prepared model is untouched.
    for layer in layers:
        if not bool(keep[layer.name].all()):
            name = next(n for n, m in prepared.named_modules() if m is _vit_consumer(prepared, layer))
            assert not torch.equal(_state(source)[f"{name}.bias"], _state(prepared)[f"{name}.bias"])
    assert all(torch.equal(before[k], v) for k, v in _state(prepared).items())
    with torch.no_grad(), recovery.applied(keep) as model:
        want = model(x)
    with torch.no_grad(), masked(source, layers, keep):
        assert torch.allclose(source(x), want, atol=1e-5)
    removal = remove_pruned(source, "vit", layers, keep, x)
    assert removal.params_after < removal.params_before
    with torch.no_grad():
        assert torch.allclose(removal.model(x), want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["heads", "neurons"])
def test_vit_least_squares_lowers_the_consumers_output_error(kind: ComponentKind) -> None:
    """Pruning one block's heads (neurons): its out_proj (fc2) output gets closer to the unpruned one."""
    prepared, layers, x = _vit("torchvision", kind)
    first = layers[0]
    keep = _half(layers, only=first.name)
    consumer = _vit_consumer(prepared, first)
    full, plain, recovered = _consumer_outputs(prepared, "vit", layers, x, keep, consumer)
    errors = {method: _error(out, full) for method, out in recovered.items()}
    assert errors["least_squares"] < errors["mean_fold"] < _error(plain, full)
    # Mean fold restores the consumer's mean output over every token of every sample.
    assert not torch.allclose(plain.mean((0, 1)), full.mean((0, 1)), atol=1e-3)
    assert torch.allclose(recovered["mean_fold"].mean((0, 1)), full.mean((0, 1)), atol=1e-4)


def test_least_squares_refits_swin_mlps_and_the_removed_model_equals_it() -> None:
    """ConvNeXt / Swin / EVA blocks: fc2 is refitted from the remaining neurons, as in a ViT."""
    from tests.pxp.test_mlp_families import SMALL_SWIN, _build

    model, _ = _build("timm/swin_tiny_patch4_window7_224", SMALL_SWIN)
    prepared = prepare_model(model, "vit")
    layers = find_layers(prepared, "vit", "neurons")
    x = torch.randn(24, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(3)
    keep = rank(layers, {layer.name: torch.rand(layer.size, generator=g) for layer in layers}).keep_masks(0.4)
    recovery = Recovery(prepared, "vit", layers, x, ["least_squares"])
    source = recovery.recovered_model(keep)
    first = layers[0].name.rpartition(".")[0] + ".fc2"  # stage 1: 64 tokens per sample, rows to spare
    assert not torch.equal(_state(source)[f"{first}.weight"], _state(prepared)[f"{first}.weight"])
    with torch.no_grad(), recovery.applied(keep) as recovered:
        want = recovered(x)
    removal = remove_pruned(source, "vit", layers, keep, x)
    with torch.no_grad():
        assert torch.allclose(removal.model(x), want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("kind", "consumer"), [("neurons", "mlp.3"), ("heads", "self_attention.out_proj")])
def test_vit_refit_staged_is_bitwise_the_unstaged_refit(kind: ComponentKind, consumer: str) -> None:
    """fc2 is a graph node of the traced ViT, out_proj runs inside one (the attention, kept whole):
    the captures run staged and refit bitwise the same weights."""
    prepared, layers, x = _vit("torchvision", kind)
    g = torch.Generator().manual_seed(3)
    keep = rank(layers, {layer.name: torch.rand(layer.size, generator=g) for layer in layers}).keep_masks(0.5)
    recovery = Recovery(prepared, "vit", layers, x, ["least_squares"], batch_size=10)
    states = []
    for staged in (True, False):
        recovery.staged = staged
        with recovery.applied(keep) as model:
            states.append({k: v.clone() for k, v in model.state_dict().items()})
    name = f"encoder.layers.encoder_layer_0.{consumer}"
    assert recovery._stages is not None and name in recovery._call_at, "the captures were not staged"
    assert not torch.equal(states[0][f"{name}.bias"], _state(prepared)[f"{name}.bias"])
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_changes_nothing_exactly_where_no_method_has_anything_to_act_on() -> None:
    """A ViT has no BatchNorm: BN re-estimation alone leaves its masked model as is; least squares does not."""
    from pxp.models.digits import digits_vit

    torch.manual_seed(0)
    vit = prepare_model(
        digits_vit(image_size=16, patch_size=4, num_layers=2, num_heads=4, hidden_dim=32, mlp_dim=64).eval(),
        "vit",
    )
    x = torch.randn(12, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    for kind in ("heads", "neurons"):
        layers = find_layers(vit, "vit", kind)
        recovery = Recovery(vit, "vit", layers, x, ["bn_reestimate"])
        assert recovery.changes_nothing
        keep = _half(layers)
        with masked(vit, layers, keep):
            want = vit(x)
        before = _state(vit)
        with recovery.applied(keep) as model:
            assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
            assert torch.equal(model(x), want)
        for methods in (["mean_fold"], ["least_squares"], ["least_squares", "bn_reestimate"]):
            assert not Recovery(vit, "vit", layers, x, methods).changes_nothing
    prepared, layers, x = _vgg()
    assert Recovery(prepared, "cnn", layers, x, []).changes_nothing
    for methods in (["bn_reestimate"], ["mean_fold"], ["least_squares"]):
        assert not Recovery(prepared, "cnn", layers, x, methods).changes_nothing
