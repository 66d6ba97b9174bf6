"""Coupled groups and the cost of every component; rankings that use them.

A CNN's channels form groups (Torch-Pruning's dependency graph, read through
:class:`~pxp.pruning.removal.cnn.CnnChannelGraph`): a decoupled channel is a group
of one; the channels of one residual stream (a ResNet stage's stem / ``bn2`` /
``bn3`` / ``downsample`` outputs) are one group with several producers. A
stream channel is physically removed only when **every** producer pruned it, so
ranking its components separately mostly zeroes them; ranking the group as one
entry (summed relevance) prunes all its members at once and removes it.

The cost of a group's root channel is what removing it saves: every producer's
output row (conv / linear MACs per output channel) plus the input slice it feeds
in every consumer (MACs per input channel times the positions it maps to, e.g.
``H·W`` positions of a ``flatten`` into a Linear). Parameters are counted the same
way (weights, biases and BN affine). A component ranked alone (``coupled=False``)
carries its producer's share and, when its group has no other producer, its
consumers' slice.

ViT components (heads, fc1 neurons) are ranked alone; components of one kind cost
the same in every block of a standard ViT, so ``relevance / cost^β`` orders them
exactly as relevance does.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from pxp.components import Family, PrunableLayer
from pxp.pruning.hardware import resolve_round_to
from pxp.pruning.ranking import PruneOrder, check_round_to, checked_scores, rank
from pxp.spec import PruneSpec

Component = tuple[str, int]


@dataclass(frozen=True)
class ComponentGraph:
    """Groups of components removed together, and what each group's removal saves."""

    #: Every component in exactly one group; a decoupled component is a group of one.
    groups: tuple[tuple[Component, ...], ...]
    #: MACs per sample and parameters saved by removing each group (same order as ``groups``).
    group_macs: tuple[float, ...]
    group_params: tuple[float, ...]
    #: MACs / parameters saved by a component's own producer row (what pruning it alone saves).
    own_macs: dict[str, torch.Tensor]
    own_params: dict[str, torch.Tensor]
    #: Model totals for one sample, to turn savings into fractions.
    total_macs: float
    total_params: float
    #: Per group: ``(module, role, positions)`` it drops when removed (role "out" or "in").
    drops: tuple[tuple[tuple[str, str, int], ...], ...] = ()
    #: Per sliceable module: (MACs, out size, in size, weight params, out-sized params).
    modules: dict[str, tuple[float, int, int, float, float]] = field(default_factory=dict)
    #: Per group: the channel dimension it is one channel of (a Torch-Pruning group, or its
    #: layer for a decoupled leftover); :class:`~pxp.pruning.ranking.PruneOrder` rounds per dimension.
    group_dims: tuple[int, ...] = ()
    #: Per dimension: its channels in the unpruned model.
    dim_sizes: tuple[int, ...] = ()

    def removed_fractions(self, keep: dict[str, torch.Tensor]) -> tuple[float, float]:
        """Fractions of MACs and parameters that structural removal saves for ``keep``, exactly.

        A group counts when all its members are pruned (what removal does). A module
        keeping a fraction ``o`` of its outputs and ``i`` of its inputs keeps ``o·i``
        of its MACs and weights (the group costs used for ranking add the two slices,
        which overcounts their intersection). Norm layers' MACs and attention-score
        matmuls are not counted, as in :mod:`pxp.pruning.cost`.
        """
        dropped: dict[tuple[str, str], int] = defaultdict(int)
        for group, drops in zip(self.groups, self.drops, strict=True):
            if all(not bool(keep[name][i]) for name, i in group):
                for module, role, n in drops:
                    dropped[(module, role)] += n
        macs = params = 0.0
        for name, (m, out, inp, weight, per_out) in self.modules.items():
            o = 1.0 - dropped.get((name, "out"), 0) / max(out, 1)
            i = 1.0 - dropped.get((name, "in"), 0) / max(inp, 1) if inp else 1.0
            macs += m * (1.0 - o * i)
            params += weight * (1.0 - o * i) + per_out * (1.0 - o)
        return macs / max(self.total_macs, 1.0), params / max(self.total_params, 1.0)


def _module_macs(model: nn.Module, example: torch.Tensor) -> dict[str, float]:
    """MACs per sample of every Conv2d / Linear, by module name."""
    macs: dict[str, float] = {}
    names = {m: n for n, m in model.named_modules()}

    def hook(module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            per = output[0].numel() * (module.in_channels // module.groups) * kh * kw
        else:
            assert isinstance(module, nn.Linear)
            per = output[0].numel() * module.in_features
        macs[names[module]] = macs.get(names[module], 0.0) + float(per)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(example[:1])
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return macs


def _out_cost(module: nn.Module, macs: float) -> tuple[float, float]:
    """MACs and parameters of one output channel / feature / BN channel."""
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        params = (module.in_channels // module.groups) * kh * kw + (module.bias is not None)
        return macs / module.out_channels, float(params)
    if isinstance(module, nn.Linear):
        return macs / module.out_features, float(module.in_features + (module.bias is not None))
    return 0.0, 2.0 if getattr(module, "affine", False) else 0.0


def _in_cost(module: nn.Module, macs: float) -> tuple[float, float]:
    """MACs and parameters of one input channel / feature."""
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return macs / module.in_channels, float(module.out_channels // module.groups * kh * kw)
    if isinstance(module, nn.Linear):
        return macs / module.in_features, float(module.out_features)
    return 0.0, 0.0


def component_graph(
    model: nn.Module, family: Family, layers: list[PrunableLayer], example: torch.Tensor
) -> ComponentGraph:
    """Groups and costs of ``layers`` in ``model`` (``example``: one input, for shapes and the graph)."""
    macs = _module_macs(model, example)
    total_macs = sum(macs.values())
    total_params = float(sum(p.numel() for p in model.parameters()))
    own_macs: dict[str, torch.Tensor] = {}
    own_params: dict[str, torch.Tensor] = {}
    for layer in layers:
        producer = model.get_submodule(layer.producer)
        m, p = _out_cost(producer, macs.get(layer.producer, 0.0))
        if layer.name != layer.producer:
            p += _out_cost(model.get_submodule(layer.name), 0.0)[1]
        own_macs[layer.name] = torch.full((layer.size,), m, dtype=torch.float64)
        own_params[layer.name] = torch.full((layer.size,), p, dtype=torch.float64)
    modules: dict[str, tuple[float, int, int, float, float]] = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            weight = float(module.weight.numel())
            bias = float(module.bias.numel()) if module.bias is not None else 0.0
            modules[name] = (macs.get(name, 0.0), module.out_channels, module.in_channels, weight, bias)
        elif isinstance(module, nn.Linear):
            bias = float(module.bias.numel()) if module.bias is not None else 0.0
            entry = (
                macs.get(name, 0.0),
                module.out_features,
                module.in_features,
                float(module.weight.numel()),
                bias,
            )
            modules[name] = entry
        elif isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d) and module.affine:
            modules[name] = (0.0, module.num_features, 0, 0.0, 2.0 * module.num_features)
    drops: list[tuple[tuple[str, str, int], ...]] = []
    groups: list[tuple[Component, ...]] = []
    group_macs: list[float] = []
    group_params: list[float] = []
    seen: set[Component] = set()
    group_dims: list[int] = []
    dim_sizes: list[int] = []
    if family == "cnn":
        from pxp.pruning.removal.cnn import CnnChannelGraph

        graph = CnnChannelGraph(model, layers, example[:1])
        for group in graph.groups:
            if not group.members:
                continue
            # A unit (one root channel, or a stripe across a grouped conv's groups) is removed whole.
            units = group.units
            members: dict[int, list[Component]] = defaultdict(list)
            for name, root_of in group.members:
                for i, root in enumerate(root_of.tolist()):
                    if root >= 0:
                        members[int(units[root])].append((name, i))
            cost_m = torch.zeros(group.size, dtype=torch.float64)
            cost_p = torch.zeros(group.size, dtype=torch.float64)
            for target in group.targets:
                module = model.get_submodule(target.module)
                fn = _out_cost if target.role == "out" else _in_cost
                m, p = fn(module, macs.get(target.module, 0.0))
                at = units[target.root]
                cost_m.index_add_(0, at, torch.full((len(at),), m, dtype=torch.float64))
                cost_p.index_add_(0, at, torch.full((len(at),), p, dtype=torch.float64))
            pinned_unit = (
                torch.zeros(group.size, dtype=torch.long).index_add_(0, units, group.pinned.long()) > 0
            )
            removable = group.blocked is None
            dim = len(dim_sizes)
            # Rounding counts units: a grouped conv's stripe is one channel of each of its conv groups.
            dim_sizes.append(int(units.unique().numel()))
            for unit, comps in sorted(members.items()):
                comps = [c for c in comps if c not in seen]
                if not comps:
                    continue
                seen.update(comps)
                groups.append(tuple(comps))
                group_dims.append(dim)
                ok = removable and not bool(pinned_unit[unit])
                group_macs.append(float(cost_m[unit]) if ok else 0.0)
                group_params.append(float(cost_p[unit]) if ok else 0.0)
                drops.append(
                    tuple(
                        (t.module, t.role, int((units[t.root] == unit).sum()))
                        for t in group.targets
                        if ok and bool((units[t.root] == unit).any())
                    )
                )
    for layer in layers:
        dim = len(dim_sizes)
        dim_sizes.append(layer.size)
        for i in range(layer.size):
            if (layer.name, i) not in seen:
                groups.append(((layer.name, i),))
                group_dims.append(dim)
                drops.append(())
                group_macs.append(float(own_macs[layer.name][i]))
                group_params.append(float(own_params[layer.name][i]))
    return ComponentGraph(
        groups=tuple(groups),
        group_macs=tuple(group_macs),
        group_params=tuple(group_params),
        own_macs=own_macs,
        own_params=own_params,
        total_macs=total_macs,
        total_params=total_params,
        drops=tuple(drops),
        modules=modules,
        group_dims=tuple(group_dims),
        dim_sizes=tuple(dim_sizes),
    )


def rank_with_cost(
    layers: list[PrunableLayer],
    scores: dict[str, torch.Tensor],
    graph: ComponentGraph,
    *,
    coupled: bool,
    cost_exponent: float = 0.0,
    normalize_per_layer: bool = False,
    min_keep: int = 1,
    round_to: int = 1,
) -> PruneOrder:
    """One ascending global ranking by ``relevance / cost^β``, over groups when ``coupled``.

    With ``coupled``, a group's relevance is the sum of its members' scores and its
    cost what removing it saves; its members are adjacent in the order, so they are
    pruned together (a rate boundary may split one group). Without it, each
    component is an entry with its own cost (its producer row, plus its consumers'
    slice when nothing else produces that channel). ``min_keep`` protects each
    layer's top components, and with ``coupled`` every group holding one. With
    ``cost_exponent=0`` and ``coupled=False`` this is :func:`pxp.pruning.ranking.rank`.
    ``round_to`` rounds the kept channels of each dimension (a coupled group's
    channels with ``coupled``, else each layer's; see :class:`PruneOrder`).
    """
    scores, protected = checked_scores(
        layers, scores, normalize_per_layer=normalize_per_layer, min_keep=min_keep
    )
    index = {layer.name: layer.index for layer in layers}
    values = {layer.name: scores[layer.name].double().tolist() for layer in layers}
    entries: list[tuple[float, int, int, tuple[Component, ...], int]] = []
    layer_dim = {layer.name: i for i, layer in enumerate(layers)}
    units: list[tuple[tuple[Component, ...], float, int]] = []
    if coupled:
        dims = graph.group_dims or tuple(range(len(graph.groups)))
        units = [(g, m, d) for g, m, d in zip(graph.groups, graph.group_macs, dims, strict=True)]
        dim_sizes = graph.dim_sizes or tuple(1 for _ in graph.groups)
    else:
        for g, m in zip(graph.groups, graph.group_macs, strict=True):
            for c in g:
                units.append(((c,), m if len(g) == 1 else float(graph.own_macs[c[0]][c[1]]), layer_dim[c[0]]))
        dim_sizes = ()
    for group, cost, dim in units:
        if any(c in protected for c in group):
            continue
        relevance = sum(values[name][i] for name, i in group)
        key = relevance / max(cost, 1.0) ** cost_exponent if cost_exponent else relevance
        first = min(group, key=lambda c: (index[c[0]], c[1]))
        entries.append((key, index[first[0]], first[1], group, dim))
    entries.sort(key=lambda e: (e[0], e[1], e[2]))
    order: list[Component] = []
    unit_of: list[int] = []
    unit_dims: list[int] = []
    for *_, group, dim in entries:
        for c in sorted(group, key=lambda c: (index[c[0]], c[1])):
            order.append(c)
            unit_of.append(len(unit_dims))
        unit_dims.append(dim)
    total = sum(layer.size for layer in layers)
    if not coupled:  # one unit per component, its layer its dimension: PruneOrder's default
        return PruneOrder(tuple(layers), tuple(order), total, round_to=check_round_to(round_to))
    return PruneOrder(
        tuple(layers),
        tuple(order),
        total,
        round_to=check_round_to(round_to),
        units=tuple(unit_of),
        unit_dims=tuple(unit_dims),
        dim_sizes=tuple(dim_sizes),
    )


def job_order(
    layers: list[PrunableLayer],
    scores: dict[str, torch.Tensor],
    prune: PruneSpec,
    device: torch.device,
    graph: Callable[[], ComponentGraph],
    normalize: bool | None = None,
) -> PruneOrder:
    """The global pruning order a job with ``prune`` gives ``scores``: the one place that reads the spec.

    Coupled groups and cost-aware ranking need the component graph (``graph`` is
    called only then); channel rounding resolves ``round_to`` for ``device``. The
    pipeline and the search's trials both rank through here, so a trial scores the
    order the job would export.
    """
    normalize_per_layer = prune.normalize_per_layer if normalize is None else normalize
    round_to = resolve_round_to(prune.round_to, layers, device)
    if prune.coupled or prune.cost_exponent:
        return rank_with_cost(
            layers,
            scores,
            graph(),
            coupled=prune.coupled,
            cost_exponent=prune.cost_exponent,
            normalize_per_layer=normalize_per_layer,
            min_keep=prune.min_keep,
            round_to=round_to,
        )
    return rank(
        layers, scores, normalize_per_layer=normalize_per_layer, min_keep=prune.min_keep, round_to=round_to
    )
