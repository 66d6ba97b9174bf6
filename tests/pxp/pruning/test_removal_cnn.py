from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.resnet import Bottleneck, ResNet

from pxp.components import find_layers, prepare_model
from pxp.errors import InvalidSpecError, VerificationError
from pxp.models.compressed import load_compressed
from pxp.models.digits import digits_resnet18, digits_vgg
from pxp.pruning.export import export_compressed
from pxp.pruning.masking import masked
from pxp.pruning.ranking import rank
from pxp.pruning.removal import count_params, removal_planner, remove_pruned, verify_equivalent


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BN statistics / affine and conv biases, so a pruned channel's constant is never 0 by accident."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.num_features, generator=g) - 0.5)
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            elif isinstance(m, nn.Conv2d) and m.bias is not None:
                m.bias.copy_(torch.rand(m.out_channels, generator=g) - 0.5)
    return model.eval()


class PlainVGG(nn.Module):
    """VGG without BN: conv (with bias) → ReLU, max-pools, flatten into a two-layer classifier."""

    def __init__(self, widths: tuple[int, ...] = (8, 16, 16), num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for w in widths:
            layers += [nn.Conv2d(channels, w, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            channels = w
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(channels * 4 * 4, 24), nn.ReLU(), nn.Linear(24, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class SigmoidCNN(nn.Module):
    """conv → BN → sigmoid: a masked channel emits sigmoid(0) = 0.5, so removing it is *not* exact."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c2, self.b2 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.sigmoid(self.b1(self.c1(x)))
        x = torch.relu(self.b2(self.c2(x)))
        return self.fc(x.mean(dim=(2, 3)))


def tiny_bottleneck_resnet() -> nn.Module:
    """torchvision ResNet of Bottleneck blocks, narrowed (stages 16/32/64/128 wide) for a fast test."""
    model = ResNet(Bottleneck, [1, 1, 1, 1], num_classes=10)
    model.inplanes = 16
    model.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
    model.bn1 = nn.BatchNorm2d(16)
    model.maxpool = nn.Identity()
    model.layer1 = model._make_layer(Bottleneck, 4, 1)
    model.layer2 = model._make_layer(Bottleneck, 8, 1, stride=2)
    model.layer3 = model._make_layer(Bottleneck, 16, 1, stride=2)
    model.layer4 = model._make_layer(Bottleneck, 32, 1, stride=2)
    model.fc = nn.Linear(128, 10)
    return model


MODELS = {
    "digits_vgg": lambda: digits_vgg(in_channels=3, widths=(8, 16, 24), hidden=32),
    "plain_vgg": PlainVGG,
    "digits_resnet18": lambda: digits_resnet18(in_channels=3, base_width=8),
    "bottleneck_resnet": tiny_bottleneck_resnet,
}
#: Input side per model: as small as the architecture allows.
SIDE = {"digits_vgg": 16, "plain_vgg": 32, "digits_resnet18": 16, "bottleneck_resnet": 16}


def setup(name: str, seed: int = 0):
    torch.manual_seed(seed)
    model = randomize(MODELS[name](), seed)
    prepared = prepare_model(model, "cnn")
    layers = find_layers(prepared, "cnn")
    scores = {layer.name: torch.rand(layer.size) for layer in layers}
    return model, prepared, layers, rank(layers, scores)


def masked_logits(prepared: nn.Module, layers, keep, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad(), masked(prepared, layers, keep):
        return prepared(x)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_removed_logits_equal_masked_at_several_rates(name: str) -> None:
    _, prepared, layers, order = setup(name)
    side = SIDE[name]
    x_verify, x_check = torch.randn(4, 3, side, side), torch.randn(6, 3, side, side)
    planner = removal_planner(prepared, "cnn", layers, x_verify)
    previous = count_params(prepared)
    for rate in (0.1, 0.5, 0.9):
        keep = order.keep_masks(rate)
        result = remove_pruned(prepared, "cnn", layers, keep, x_verify, planner=planner)
        with torch.no_grad():
            got = result.model(x_check)
        want = masked_logits(prepared, layers, keep, x_check)
        scale = float(want.abs().max())
        assert float((got - want).abs().max()) <= 1e-5 * scale + 1e-7
        assert result.params_after == count_params(result.model) < previous
        previous = result.params_after
        assert result.removed_components > 0


def test_vgg_parameter_count_matches_kept_channels() -> None:
    model, prepared, layers, order = setup("digits_vgg")
    keep = order.keep_masks(0.5)
    result = remove_pruned(prepared, "cnn", layers, keep, torch.randn(2, 3, 16, 16))
    assert result.zeroed_components == 0
    expected, in_channels = 0, 3
    for layer in layers:
        kept = int(keep[layer.name].sum())
        assert result.kept_indices[layer.name] == keep[layer.name].nonzero().flatten().tolist()
        expected += kept * in_channels * 9 + kept + 2 * kept  # conv weight, conv bias, BN affine
        in_channels = kept
    first, second = [m for m in model.classifier if isinstance(m, nn.Linear)]
    pool = model.avgpool.output_size[0] * model.avgpool.output_size[1]
    expected += in_channels * pool * first.out_features + first.out_features
    expected += second.weight.numel() + second.bias.numel()
    assert result.params_after == expected


def test_plain_vgg_with_bias_removes_every_pruned_filter() -> None:
    _, prepared, layers, order = setup("plain_vgg")
    assert all(layer.name == layer.producer for layer in layers)
    keep = order.keep_masks(0.6)
    result = remove_pruned(prepared, "cnn", layers, keep, torch.randn(2, 3, 32, 32))
    for layer in layers:
        conv = result.model.get_submodule(layer.producer)
        assert conv.out_channels == int(keep[layer.name].sum()) == conv.bias.numel()


def test_resnet_removes_decoupled_channels_and_zeroes_coupled_ones() -> None:
    _, prepared, layers, order = setup("digits_resnet18")
    keep = order.keep_masks(0.5)
    result = remove_pruned(prepared, "cnn", layers, keep, torch.randn(2, 3, 16, 16))
    for layer in layers:
        pruned = set((~keep[layer.name]).nonzero().flatten().tolist())
        removed, zeroed = set(result.plan.removed[layer.name]), set(result.plan.zeroed[layer.name])
        assert removed | zeroed == pruned and not removed & zeroed
        if layer.producer.endswith("conv1") and layer.producer != "conv1":
            assert zeroed == set()  # internal channel of a basic block: always removable
            assert result.model.get_submodule(layer.producer).out_channels == layer.size - len(pruned)
        conv = result.model.get_submodule(layer.producer)
        if zeroed:
            position = {c: i for i, c in enumerate(i for i in range(layer.size) if i not in removed)}
            rows = torch.tensor([position[c] for c in sorted(zeroed)])
            assert conv.weight[rows].abs().max() == 0
            assert result.model.get_submodule(layer.name).bias[rows].abs().max() == 0


def test_residual_channel_pruned_by_its_whole_group_is_removed() -> None:
    _, prepared, layers, order = setup("digits_resnet18")
    keep = order.keep_masks(0.0)
    stage1 = [layer for layer in layers if layer.producer == "conv1" or layer.producer.endswith(".conv2")]
    stage1 = [layer for layer in stage1 if layer.producer == "conv1" or layer.producer.startswith("layer1.")]
    assert len(stage1) == 3  # stem + the last conv of both layer1 blocks
    for layer in stage1[:-1]:
        keep[layer.name][0] = False
    partial = remove_pruned(prepared, "cnn", layers, keep, torch.randn(2, 3, 16, 16))
    assert partial.removed_components == 0 and partial.zeroed_components == 2
    keep[stage1[-1].name][0] = False
    whole = remove_pruned(prepared, "cnn", layers, keep, torch.randn(2, 3, 16, 16))
    assert whole.removed_components == 3 and whole.zeroed_components == 0
    assert whole.model.get_submodule("layer2.0.conv1").in_channels == 7
    assert whole.model.get_submodule("layer2.0.downsample.0").in_channels == 7


def test_models_are_not_modified_and_calls_do_not_leak_state() -> None:
    model, prepared, layers, order = setup("digits_resnet18")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    prepared_before = {k: v.clone() for k, v in prepared.state_dict().items()}
    x = torch.randn(2, 3, 16, 16)
    first = remove_pruned(prepared, "cnn", layers, order.keep_masks(0.5), x)
    _, other_prepared, other_layers, other_order = setup("digits_vgg", seed=1)
    remove_pruned(other_prepared, "cnn", other_layers, other_order.keep_masks(0.3), x)
    again = remove_pruned(prepared, "cnn", layers, order.keep_masks(0.5), x)
    assert first.plan.removed == again.plan.removed and first.modules == again.modules
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    for k, v in prepared.state_dict().items():
        assert torch.equal(v, prepared_before[k])
    with torch.no_grad():
        first.model.get_submodule("layer1.0.conv1").weight.add_(1.0)
        first.model.get_submodule("layer1.0.bn2").running_mean.add_(1.0)
    assert torch.equal(
        prepared.get_submodule("layer1.0.conv1").weight, prepared_before["layer1.0.conv1.weight"]
    )
    assert torch.equal(
        prepared.get_submodule("layer1.0.bn2").running_mean, prepared_before["layer1.0.bn2.running_mean"]
    )


def test_non_exact_removal_raises_verification_error() -> None:
    torch.manual_seed(0)
    prepared = prepare_model(randomize(SigmoidCNN()), "cnn")
    layers = find_layers(prepared, "cnn")
    keep = rank(layers, {layer.name: torch.rand(layer.size) for layer in layers}).keep_masks(0.4)
    assert not bool(keep[layers[0].name].all())
    with pytest.raises(VerificationError, match="differ from the masked model"):
        remove_pruned(prepared, "cnn", layers, keep, torch.randn(4, 3, 16, 16))


def test_verify_equivalent_reports_the_difference() -> None:
    model = nn.Linear(4, 3)
    x = torch.randn(5, 4)
    worst, _ = verify_equivalent(model, model, x)
    assert worst == 0.0
    with pytest.raises(VerificationError):
        verify_equivalent(lambda t: model(t) + 1e-2, model, x)


def test_layer_without_kept_component_is_refused() -> None:
    _, prepared, layers, order = setup("digits_vgg")
    keep = order.keep_masks(0.2)
    keep[layers[1].name][:] = False
    with pytest.raises(InvalidSpecError, match="keeps no component"):
        remove_pruned(prepared, "cnn", layers, keep, torch.randn(2, 3, 16, 16))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["vgg16", "resnet50"])
def test_imagenet_cnn_removal_equals_masking(name: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = randomize(getattr(torchvision.models, name)(num_classes=1000))
    prepared = prepare_model(model, "cnn")
    layers = find_layers(prepared, "cnn")
    order = rank(layers, {layer.name: torch.rand(layer.size) for layer in layers})
    x = torch.randn(2, 3, 64, 64)
    planner = removal_planner(prepared, "cnn", layers, x)
    for rate in (0.3, 0.5):
        keep = order.keep_masks(rate)
        result = remove_pruned(prepared, "cnn", layers, keep, x, planner=planner)
        want = masked_logits(prepared, layers, keep, x)
        with torch.no_grad():
            got = result.model(x)
        assert float((got - want).abs().max()) <= 1e-5 * float(want.abs().max()) + 1e-7
        assert result.params_after < result.params_before
    export_compressed(
        tmp_path, result, x, architecture=name, family="cnn", kwargs={"num_classes": 1000}, class_names=[]
    )
    with torch.no_grad():
        assert torch.equal(load_compressed(tmp_path)(x), got)


def test_a_shared_cut_copy_reuses_only_the_unchanged_tensors_and_computes_the_same() -> None:
    """``share_unchanged`` (the fast sweep's per-rate models) copies no tensor the cuts leave alone."""
    from pxp.pruning.removal.plan import cut_copy

    torch.manual_seed(0)
    prepared = prepare_model(randomize(digits_resnet18(base_width=8, layers=(1, 1, 1, 1))), "cnn")
    layers = find_layers(prepared, "cnn")
    # Prune only the last stage, so everything before it is unchanged.
    scores = {la.name: torch.rand(la.size) + (0.0 if la.name.startswith("layer4") else 10.0) for la in layers}
    keep = rank(layers, scores).keep_masks(0.1)
    before = {k: v.clone() for k, v in prepared.state_dict().items()}
    plan = removal_planner(prepared, "cnn", layers, torch.randn(1, 1, 16, 16)).plan(keep)
    shared = cut_copy(prepared, plan.cuts, share_unchanged=True).eval()
    private = cut_copy(prepared, plan.cuts).eval()
    original = dict(prepared.named_parameters())
    for name, t in shared.named_parameters():
        module = name.rpartition(".")[0]
        if module in plan.cuts:
            assert t.data_ptr() != original[name].data_ptr(), name
        else:
            assert t.data_ptr() == original[name].data_ptr(), name
    assert any(name.rpartition(".")[0] not in plan.cuts for name, _ in shared.named_parameters())
    assert all(t.data_ptr() != original[n].data_ptr() for n, t in private.named_parameters())
    x = torch.randn(4, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(shared(x), private(x))
    assert all(torch.equal(v, before[k]) for k, v in prepared.state_dict().items())
