"""Which conv channels of a CNN can be physically removed, from Torch-Pruning's dependency graph.

Masking zeroes a pruned channel at its hook point (the BN after the conv, or the
conv). Removing it is exact when that zero reaches only consumers that ignore it
(the next conv's or the classifier's input slice, across ReLU / pooling / flatten).

Residual networks couple channels: in a ResNet, a channel of the stem, of every
block's last BN (``bn2`` / ``bn3``) and of the ``downsample`` BN in one stage is
one channel of the residual stream. Masking one of those producers only zeroes
*its contribution*; the identity path still carries the channel. So a coupled
channel is removed only when **every** producer in its group pruned it (then the
stream channel is exactly zero everywhere and no consumer sees it); otherwise it
is kept and the pruned producers' rows are zeroed (weight, bias, BN affine),
which is exactly what masking does. Decoupled channels (``conv1`` / ``conv2``
inside blocks, every conv of a VGG) are always removed.
:attr:`RemovalPlan.removed` / :attr:`RemovalPlan.zeroed` report the split.

Depthwise-separable blocks couple the same way: a depthwise conv's channel ``c``
reads only channel ``c`` of the conv that feeds it (an inverted residual's 1×1
expansion, or the stem), so the expansion conv + BN, the depthwise conv + BN and
the next 1×1 projection's input slice are one group with two producers; it is
removed when both pruned it (ranked as one group, ``coupled=True``). A
squeeze-excitation block on those channels follows the group: its reduce conv's
input slice and its expand (gate) conv's output row are sliced, since the gate
only multiplies a channel that is then zero. The gate conv is not a prunable layer
(:mod:`pxp.components.gates`) and does not pin the channel.

Grouped (non-depthwise) convs (ResNeXt, RegNet group widths) must keep equal-width
groups, so their channels are removed in *stripes*: local index ``j`` of every conv
group at once (output channels ``j, j + w, j + 2w, ...`` for group width ``w``; the
same for the input channels, i.e. the producer's rows feeding them). Each group
records, per root channel, the unit it goes with (:attr:`ChannelGroup.units`); a
unit is removed only when every channel in it can be, otherwise its pruned
channels are zeroed. The grouped conv keeps its ``groups`` and loses the same
positions in every group.

Torch-Pruning is used only to *find* the groups and the index mapping (also
across ``flatten`` into the first Linear); slicing is ours
(:mod:`pxp.pruning.removal.plan`), so the removed model and the fast curve sweep
share it. Every call builds its own ``DependencyGraph`` with fresh containers:
the library keeps state in mutable default arguments.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn

from pxp.components import PrunableLayer
from pxp.errors import InvalidSpecError
from pxp.pruning.removal.plan import SLICEABLE, ModuleCut, RemovalPlan, checked_mask, resized

#: Torch-Pruning pseudo-ops a channel may pass through and still be removed (index mapping is known).
_PASS_THROUGH = ("_ElementWiseOp", "_ReshapeOp", "_ConcatOp", "_SplitOp")


@dataclass(frozen=True)
class _Target:
    module: str
    role: str  # "out" or "in"
    #: Positions along the module's output / input dimension, and the root channel of each.
    idx: torch.Tensor
    root: torch.Tensor


@dataclass(frozen=True)
class ChannelGroup:
    """Channels that exist together: removing root channel ``c`` removes every target position mapped to it."""

    size: int
    targets: tuple[_Target, ...]
    #: Prunable layers producing into the group: (layer name, root channel of each component).
    members: tuple[tuple[str, torch.Tensor], ...]
    #: Root channels also produced by a module that is not a prunable layer: never removable.
    pinned: torch.Tensor
    #: Why no channel of the group can be removed, if so.
    blocked: str | None
    #: Per root channel, the unit it is removed with (the smallest root of the unit). A unit is one
    #: channel, except where the group feeds or is produced by a grouped (non-depthwise) conv: there
    #: the same local index of every conv group goes together, so all groups keep equal width.
    units: torch.Tensor


def _depthwise(module: nn.Conv2d) -> bool:
    return module.groups == module.in_channels == module.out_channels


def _stripes(
    module: nn.Conv2d, role: str, idx: torch.Tensor, root: torch.Tensor
) -> list[torch.Tensor] | None:
    """Root channels tied by a grouped conv: per local index, the roots at that index in every conv group.

    None when ``idx`` does not cover whole stripes (some conv groups' channels lie outside this group).
    """
    size = module.out_channels if role == "out" else module.in_channels
    per = size // module.groups
    local = idx % per
    stripes = []
    for j in local.unique().tolist():
        at = local == j
        if int(at.sum()) != module.groups:
            return None
        stripes.append(root[at])
    return stripes


def _units(size: int, ties: list[torch.Tensor]) -> torch.Tensor:
    """Union of the tied root channels: per root, the smallest root of its unit."""
    parent = list(range(size))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for tie in ties:
        roots = tie.tolist()
        for other in roots[1:]:
            a, b = find(roots[0]), find(other)
            if a != b:
                parent[max(a, b)] = min(a, b)
    return torch.tensor([find(i) for i in range(size)], dtype=torch.long)


def _dim_size(module: nn.Module, role: str) -> int:
    if isinstance(module, nn.Conv2d):
        return module.out_channels if role == "out" else module.in_channels
    if isinstance(module, nn.Linear):
        return module.out_features if role == "out" else module.in_features
    assert isinstance(module, nn.BatchNorm2d | nn.BatchNorm1d)
    return module.num_features


class CnnChannelGraph:
    """Channel groups of a prepared CNN; :meth:`plan` turns keep-masks into a :class:`RemovalPlan`."""

    def __init__(self, prepared: nn.Module, layers: list[PrunableLayer], example: torch.Tensor) -> None:
        self.layers = list(layers)
        self._sizes: dict[tuple[str, str], int] = {}
        self._gates: set[str] = set()
        self.groups = self._analyse(prepared, example)

    def _analyse(self, prepared: nn.Module, example: torch.Tensor) -> list[ChannelGroup]:
        import torch_pruning as tp

        from pxp.components.gates import gate_convs

        names = {module: name for name, module in prepared.named_modules()}
        producers = {layer.producer: layer for layer in self.layers}
        self._gates = gate_convs(prepared)
        x = example[:1].detach().clone().to(next(prepared.parameters()).device).requires_grad_(True)
        with torch.enable_grad():
            graph = tp.DependencyGraph().build_dependency(
                prepared,
                example_inputs=x,
                unwrapped_parameters=[],
                customized_pruners={},
                ignored_layers=[],
                ignored_params=[],
                verbose=False,
            )
            raw_groups = list(graph.get_all_groups(ignored_layers=[], root_module_types=(nn.Conv2d,)))
        groups = []
        for group in raw_groups:
            groups.append(self._group(graph, group, names, producers))
        return groups

    def _group(
        self,
        graph: tp.DependencyGraph,
        group: tp.dependency.Group,
        names: dict[nn.Module, str],
        producers: dict[str, PrunableLayer],
    ) -> ChannelGroup:
        size = len(group[0].idxs)
        targets: list[_Target] = []
        members: list[tuple[str, torch.Tensor]] = []
        pinned = torch.zeros(size, dtype=torch.bool)
        blocked: str | None = None
        ties: list[torch.Tensor] = []
        for item in group:
            module = item.dep.target.module
            idx = torch.as_tensor(list(item.idxs), dtype=torch.long)
            root = torch.as_tensor(list(item.root_idxs), dtype=torch.long)
            name = names.get(module) if isinstance(module, nn.Module) else None
            if name is None:
                kind = type(module).__name__
                if kind not in _PASS_THROUGH:
                    blocked = blocked or f"channels reach a {kind.strip('_')}"
                continue
            role = "out" if graph.is_out_channel_pruning_fn(item.dep.handler) else "in"
            if not isinstance(module, SLICEABLE):
                blocked = (
                    blocked or f"channels reach {name} ({type(module).__name__}), which cannot be sliced"
                )
                continue
            if isinstance(module, nn.Conv2d) and module.groups != 1 and not _depthwise(module):
                stripes = _stripes(module, role, idx, root)
                if stripes is None:
                    blocked = blocked or (
                        f"channels reach {name} (groups={module.groups}) in only part of its conv groups"
                    )
                    continue
                ties.extend(stripes)
            self._sizes[(name, role)] = _dim_size(module, role)
            targets.append(_Target(name, role, idx, root))
            if role == "out" and isinstance(module, nn.Conv2d | nn.Linear):
                layer = producers.get(name)
                if layer is None and name not in self._gates:
                    pinned[root] = True
                elif layer is None:
                    # A squeeze-excitation gate multiplies the channel: once the channel is zero
                    # (all its producers pruned), the gate's row for it is dead and is sliced along.
                    continue
                else:
                    of = torch.full((layer.size,), -1, dtype=torch.long)
                    of[idx] = root
                    members.append((layer.name, of))
        return ChannelGroup(size, tuple(targets), tuple(members), pinned, blocked, _units(size, ties))

    def plan(self, keep: dict[str, torch.Tensor]) -> RemovalPlan:
        """Physically remove every channel whose whole group pruned it; zero the other pruned ones."""
        for layer in self.layers:
            checked_mask(keep, layer)
        drops: dict[tuple[str, str], list[torch.Tensor]] = defaultdict(list)
        removed_component: dict[str, torch.Tensor] = {
            layer.name: torch.zeros(layer.size, dtype=torch.bool) for layer in self.layers
        }
        for group in self.groups:
            if group.blocked is not None or not group.members:
                continue
            removable = ~group.pinned.clone()
            covered = torch.zeros(group.size, dtype=torch.bool)
            for layer_name, root_of in group.members:
                mask = keep[layer_name].to("cpu", torch.bool)
                removable[root_of[mask]] = False
                covered[root_of] = True
            removable &= covered
            # A unit goes only when every root channel in it can go.
            units = group.units
            blocking = torch.zeros(group.size, dtype=torch.long).index_add_(0, units, (~removable).long())
            removable &= blocking[units] == 0
            if not bool(removable.any()):
                continue
            for layer_name, root_of in group.members:
                removed_component[layer_name] |= removable[root_of]
            for target in group.targets:
                drops[(target.module, target.role)].append(target.idx[removable[target.root]])
        out_keep: dict[str, torch.Tensor] = {}
        in_keep: dict[str, torch.Tensor] = {}
        for (module, role), parts in drops.items():
            size = self._sizes[(module, role)]
            alive = torch.ones(size, dtype=torch.bool)
            alive[torch.cat(parts)] = False
            if not bool(alive.any()):
                raise InvalidSpecError(f"removal would leave {module} without {role}put channels")
            (out_keep if role == "out" else in_keep)[module] = alive.nonzero().flatten()
        zero: dict[str, torch.Tensor] = {}
        plan = RemovalPlan()
        for layer in self.layers:
            pruned = ~keep[layer.name].to("cpu", torch.bool)
            dead = (pruned & ~removed_component[layer.name]).nonzero().flatten()
            plan.removed[layer.name] = removed_component[layer.name].nonzero().flatten().tolist()
            plan.zeroed[layer.name] = dead.tolist()
            if dead.numel():
                for module in {layer.producer, layer.name}:
                    zero[module] = dead
        for module in sorted(set(out_keep) | set(in_keep) | set(zero)):
            plan.cuts[module] = ModuleCut(
                out_keep=out_keep.get(module), in_keep=in_keep.get(module), zero_out=zero.get(module)
            )
        return plan

    def changed_modules(self, plan: RemovalPlan) -> list[str]:
        return resized(plan)

    def finalize(self, model: nn.Module) -> nn.Module:
        return model
