"""Closed-form, train-free recovery of a masked model (no gradient steps).

Three transforms, applied in this order to the masked model at one rate:

``mean_fold``
    A pruned CNN channel that is decoupled (its channel group has one producer,
    so it is physically removed) stops feeding its consumers. Its mean value at
    each consumer input position, measured on the reference samples in the
    *unpruned* model, is folded into the consumer: for a ``Conv2d`` consumer the
    lost mean contribution is ``Σ_c μ_c · Σ_{kh,kw} W[:, c]``, for a ``Linear``
    consumer (after ``flatten``) ``W[:, positions] @ μ[positions]``. It goes into
    the consumer's bias, or, for a bias-free conv followed by a BatchNorm, into
    that BN's running mean (``BN(z + d)`` = BN with ``running_mean − d``).
    *Approximations*: (1) the Conv2d fold treats the input as constant over the
    whole kernel window, which is wrong at padded borders, where part of the window
    reads zeros; the fold over-compensates there by the padded taps' share; (2) the means come from the unpruned
    model, so upstream pruning at the same rate is not reflected in them. Channels
    of a residual stream (coupled groups) and consumers with neither bias nor a
    following BN are left alone. On a ViT (``family="vit"``) the consumer of a
    pruned attention head is its block's ``out_proj`` (the head's ``head_dim`` input
    columns), of a pruned MLP neuron the MLP's ``fc2``
    (:mod:`pxp.pruning.vit_consumers`); the means are per input column over every
    token of every reference sample, folded into the consumer's bias (a token-wise
    constant: the class token and the patch tokens get the same correction).

``least_squares``
    Layer by layer in forward order, every Conv2d / Linear consumer of a channel
    the masked model feeds it as zero (a pruned decoupled channel, or a residual-stream
    channel that every producer of the stream pruned, as coupled ranking does) is
    refitted by ridge regression so that, on the reference
    samples, its output from the *remaining* inputs (as the masked, already
    refitted model delivers them) reproduces its output in the unpruned model:
    ``W' = argmin ‖X_kept W'ᵀ (+ b') − Y‖² + λ‖W'‖²`` with ``X`` the im2col patches
    (conv, gathered only at ``⌈max_rows / samples⌉`` output positions per
    reference sample, drawn with a fixed seed per sample) or features (linear), and ``λ = ridge · mean diag(XᵀX)``. The bias is refitted when the consumer
    has one. A consumer with fewer rows than twice its unknowns (a Linear after
    ``flatten`` sees one row per reference sample) keeps its weights.
    On a ViT the consumers are the same Linears as for the mean fold (``out_proj``
    from the remaining heads' outputs, ``fc2`` from the remaining hidden units); a
    row is one token of one reference sample. Every token is used while a sample has
    at most ``⌈max_rows / samples⌉`` of them (the digits ViT: 65 tokens, 100 samples),
    so a block's refit sees ``samples × tokens`` rows; beyond that, that many tokens
    are drawn per sample as conv positions are, which bounds the captures' memory on
    large ViTs. ``fc2`` outputs (residual-stream dimensions) have no consumer to
    refit. On the digits ViT the ``out_proj`` refit lowered the heads' safe rate
    (docs/deliverable.md, session 5): ``pxp compress`` does not apply it by default.

``bn_reestimate``
    Every BatchNorm's running statistics are re-estimated on the reference
    samples with the masks in place (cumulative average, one pass, the other
    modules in eval mode), so each BN normalises what it now receives.

**Staged captures** (``staged=True``, the default): least squares needs, for every
refitted consumer, its input on the reference samples in the current (masked, partly
refitted) model. Without staging each capture is a full forward pass. Staged, the
model runs as its fx graph (:class:`pxp.pruning.fast_curve._Stages`), a capture stops
right after its consumer, and the next capture starts from the deepest cut (a point
where one tensor carries everything) that the previous one passed: no module before
that cut has changed since (a refit changes only the consumer just captured, which
lies at or after every cut kept). The ops are the model's own, so the design rows,
the refitted weights and the accuracies are bitwise those of the unstaged path
(tested); a model that cannot be traced, or whose staged run differs from its
forward, is captured unstaged. On a ViT the fx graph keeps each attention module
whole: a capture of its ``out_proj`` (and the heads mask hook point inside it) stops
right after the attention's node; neurons layers (fc1 / fc2 are graph nodes) stop at fc2.

Both modify parameters and buffers of the model in place; :meth:`Recovery.applied`
restores them on exit, so a curve can evaluate many rates on one model, and the
export can remove the pruned components from the recovered masked model and
verify the removed model against it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import get_args

import torch
from torch import nn

from pxp.attribution.engine import batches
from pxp.components import Family, PrunableLayer
from pxp.pruning.fast_curve import _Stages, _trace
from pxp.pruning.masking import masked
from pxp.pruning.ranking import PruneOrder
from pxp.spec import RecoveryName

RECOVERIES: tuple[str, ...] = get_args(RecoveryName)


def compress_recovery(heads: bool) -> list[str]:
    """``pxp compress``'s default recovery: least squares + BN, none when pruning ViT attention heads.

    On the digits ViT, refitting ``out_proj`` from the remaining heads lowered the safe
    rate on every split seed (docs/deliverable.md), while refitting ``fc2`` from the
    remaining MLP neurons doubled it; BN re-estimation has nothing to do on a ViT. The
    CLI and ``bench/deliverable.py``'s default rows both take it from here.
    """
    return [] if heads else ["least_squares", "bn_reestimate"]


_BN = (nn.BatchNorm1d, nn.BatchNorm2d)


class _Fold:
    """One channel group's consumers: (consumer module, input positions, root channel of each).

    A decoupled group has one prunable producer, whose components are the root channels.
    A coupled group (a residual stream) has several; a root channel reaches the consumers
    as zero only when every producer pruned it and no unprunable module produces it
    (``pinned``). Coupled groups are refitted by least squares but never mean-folded.
    """

    def __init__(
        self,
        layer: str,
        consumers: list[tuple[str, torch.Tensor, torch.Tensor]],
        members: Sequence[tuple[str, torch.Tensor]] = (),
        pinned: torch.Tensor | None = None,
    ) -> None:
        self.layer = layer
        self.consumers = consumers
        self.members = tuple(members)
        self.pinned = pinned

    @property
    def coupled(self) -> bool:
        return len(self.members) > 1

    def dead_roots(self, keep: dict[str, torch.Tensor]) -> torch.Tensor:
        """Per root channel: True where the masked model feeds the consumers an exact zero."""
        if not self.coupled:
            return ~keep[self.layer].to("cpu", torch.bool)
        assert self.pinned is not None
        alive = self.pinned.clone()
        covered = torch.zeros_like(alive)
        for name, root_of in self.members:
            mask = keep[name].to("cpu", torch.bool)
            produced = root_of >= 0
            alive[root_of[mask & produced]] = True
            covered[root_of[produced]] = True
        return covered & ~alive


class Recovery:
    """Recovery of one prepared model, built once (reference statistics, channel graph), applied per rate."""

    def __init__(
        self,
        model: nn.Module,
        family: Family,
        layers: Sequence[PrunableLayer],
        x_reference: torch.Tensor,
        methods: Sequence[str],
        *,
        batch_size: int = 256,
        ridge: float = 1e-3,
        max_rows: int = 8192,
        staged: bool = True,
    ) -> None:
        unknown = sorted(set(methods) - set(RECOVERIES))
        if unknown:
            raise ValueError(f"unknown recovery method(s) {unknown}; known: {list(RECOVERIES)}")
        self.model = model
        self.family = family
        self.layers = list(layers)
        self.x = x_reference
        self.methods = [m for m in RECOVERIES if m in methods]
        self.batch_size = batch_size
        self._folds: list[_Fold] = []
        self._means: dict[str, torch.Tensor] = {}
        self._bn_after: dict[str, str] = {
            layer.producer: layer.name for layer in self.layers if layer.name != layer.producer
        }
        self._targets: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.ridge = ridge
        self.max_rows = max_rows
        #: Least-squares captures run staged (see the module docstring) and gather a batch's
        #: patches at once; False: full forward passes and a per-sample gather (the old path).
        self.staged = staged
        self._stages: _Stages | None = None
        self._call_at: dict[str, int] = {}
        self._stages_built = False
        if {"mean_fold", "least_squares"} & set(self.methods):
            if family == "cnn":
                self._prepare_fold()
            else:
                self._prepare_vit_fold()
        if "least_squares" in self.methods:
            self._targets = self._capture_targets()

    @property
    def enabled(self) -> bool:
        return bool(self.methods)

    @property
    def changes_nothing(self) -> bool:
        """Whether :meth:`applied` leaves every masked model exactly as masking alone does.

        True where the model gives the methods nothing to act on: mean folding and least
        squares act only on the consumers of pruned channels, heads or neurons
        (``self._folds``), BN re-estimation only on BatchNorm layers. A ViT has no
        BatchNorm, so BN re-estimation alone leaves its curve a plain masked one, which the
        fast sweep evaluates exactly.
        """
        if not self.enabled:
            return True
        folds = {"mean_fold", "least_squares"} & set(self.methods)
        if folds and any(fold.consumers for fold in self._folds):
            return False
        return "bn_reestimate" not in self.methods or not any(
            isinstance(m, _BN) for m in self.model.modules()
        )

    def _prepare_fold(self) -> None:
        from pxp.pruning.removal.cnn import CnnChannelGraph

        graph = CnnChannelGraph(self.model, self.layers, self.x[:1])
        folds: dict[str, _Fold] = {}
        refit_coupled = "least_squares" in self.methods
        for group in graph.groups:
            if group.blocked is not None or not group.members:
                continue
            coupled = len(group.members) > 1
            if coupled and not refit_coupled:
                continue
            if not coupled and bool(group.pinned.any()):
                continue
            layer_name, _ = group.members[0]
            consumers = [
                (t.module, t.idx, t.root)
                for t in group.targets
                if t.role == "in" and _foldable(self.model.get_submodule(t.module))
            ]
            if consumers:
                folds[layer_name] = _Fold(
                    layer_name, consumers, group.members if coupled else (), group.pinned
                )
        self._folds = list(folds.values())
        if "mean_fold" in self.methods:
            self._means = self._consumer_input_means(
                {c for f in self._folds if not f.coupled for c, _, _ in f.consumers}
            )

    def _prepare_vit_fold(self) -> None:
        """One decoupled group per heads / neurons layer: its consumer Linear (out_proj, fc2)."""
        from pxp.pruning.vit_consumers import vit_consumers

        self._folds = [
            _Fold(name, consumers) for name, consumers in vit_consumers(self.model, self.layers).items()
        ]
        if "mean_fold" in self.methods:
            self._means = self._consumer_input_means({c for f in self._folds for c, _, _ in f.consumers})

    @torch.no_grad()
    def _consumer_input_means(self, names: set[str]) -> dict[str, torch.Tensor]:
        """Mean of each consumer's input per position (conv: per channel over batch and space)."""
        sums: dict[str, torch.Tensor] = {}
        counts: dict[str, int] = {}

        def make_hook(name: str) -> Callable[[nn.Module, tuple], None]:
            def hook(_m: nn.Module, inputs: tuple) -> None:
                x = inputs[0].detach().double()
                if x.dim() == 4:
                    s, n = x.sum(dim=(0, 2, 3)), x.shape[0] * x.shape[2] * x.shape[3]
                else:
                    flat = x.reshape(-1, x.shape[-1])
                    s, n = flat.sum(0), flat.shape[0]
                sums[name] = sums[name] + s if name in sums else s
                counts[name] = counts.get(name, 0) + n

            return hook

        was_training = self.model.training
        self.model.eval()
        handles = [self.model.get_submodule(n).register_forward_pre_hook(make_hook(n)) for n in sorted(names)]
        try:
            for part in batches(len(self.x), self.batch_size):
                self.model(self.x[part])
        finally:
            for h in handles:
                h.remove()
            self.model.train(was_training)
        return {name: (s / counts[name]).float() for name, s in sums.items()}

    def _consumers_in_order(self) -> list[str]:
        names = {c for f in self._folds for c, _, _ in f.consumers}
        return [n for n, m in self.model.named_modules() if n in names and _solvable(m)]

    def _positions(self, sample: int, count: int) -> torch.Tensor:
        """The output positions sampled for reference sample ``sample`` (same in every capture)."""
        per = -(-self.max_rows // max(len(self.x), 1))
        if count <= per:
            return torch.arange(count)
        g = torch.Generator().manual_seed(sample)
        return torch.randperm(count, generator=g)[:per].sort().values

    def _rows(
        self, module: nn.Module, x: torch.Tensor, out: torch.Tensor, first: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Design rows (im2col patches or features) and output rows at the sampled positions of a batch.

        Patches are gathered only at sampled output positions, so memory stays at
        ``max_rows × fan-in`` whatever the image size (no full im2col).
        """
        if isinstance(module, nn.Linear):
            if x.dim() <= 2:
                return x, out
            # Tokens (ViT) or positions (Swin, ConvNeXt MLPs): every one up to ⌈max_rows / samples⌉
            # per sample, else that many drawn per sample, as for conv output positions.
            tokens = x.reshape(len(x), -1, x.shape[-1])
            outputs = out.reshape(len(out), -1, out.shape[-1])
            count = tokens.shape[1]
            pos = torch.stack([self._positions(first + b, count) for b in range(len(x))]).to(x.device)
            sample = torch.arange(len(x), device=x.device)[:, None]
            return tokens[sample, pos].reshape(-1, x.shape[-1]), outputs[sample, pos].reshape(
                -1, out.shape[-1]
            )
        assert isinstance(module, nn.Conv2d)
        padding = module.padding
        assert not isinstance(padding, str)
        (kh, kw), (sh, sw), (dh, dw) = module.kernel_size, module.stride, module.dilation
        xp = nn.functional.pad(x, (padding[1], padding[1], padding[0], padding[0]))
        height, width = out.shape[2], out.shape[3]
        design, target = [], []
        ky = torch.arange(kh, device=x.device) * dh
        kx = torch.arange(kw, device=x.device) * dw
        if self.staged and len(x):
            # One gather for the whole batch (every sample has the same number of positions):
            # the same values in the same order as the per-sample loop below, without its overhead.
            pos = torch.stack([self._positions(first + b, height * width) for b in range(len(x))]).to(
                x.device
            )
            oy, ox = pos // width, pos % width  # (B, P)
            rows = (oy * sh)[..., None] + ky  # (B, P, kh)
            cols = (ox * sw)[..., None] + kx  # (B, P, kw)
            sample = torch.arange(len(x), device=x.device)
            patches = xp[
                sample[:, None, None, None], :, rows[:, :, :, None], cols[:, :, None, :]
            ]  # (B, P, kh, kw, C)
            flat = patches.permute(0, 1, 4, 2, 3).reshape(pos.numel(), -1)
            outputs = out[sample[:, None], :, oy, ox]  # (B, P, O)
            return flat, outputs.reshape(pos.numel(), -1)
        for b in range(len(x)):
            pos = self._positions(first + b, height * width).to(x.device)
            oy, ox = pos // width, pos % width
            rows = (oy * sh)[:, None] + ky  # (P, kh)
            cols = (ox * sw)[:, None] + kx  # (P, kw)
            patches = xp[b][:, rows[:, :, None], cols[:, None, :]]  # (C, P, kh, kw)
            design.append(patches.permute(1, 0, 2, 3).reshape(len(pos), -1))
            target.append(out[b][:, oy, ox].T)
        return torch.cat(design), torch.cat(target)

    def _staging(self) -> _Stages | None:
        """The model's fx stages for staged captures (built once), or None where staging is not exact."""
        if not self._stages_built:
            self._stages_built = True
            was_training = self.model.training
            self.model.eval()
            try:
                stages = _trace(self.model, self.model, self.x[: min(len(self.x), 4)])
            finally:
                self.model.train(was_training)
            if stages is not None:
                calls: dict[str, list[int]] = {}
                for i, node in enumerate(stages.nodes):
                    if node.op == "call_module":
                        calls.setdefault(str(node.target), []).append(i)
                # A consumer is staged only if the graph calls it exactly once, as a whole.
                self._call_at = {name: at[0] for name, at in calls.items() if len(at) == 1}
                names = [name for name, _ in self.model.named_modules() if name]
                self._call_at.update(_inside_leaves(stages, names, calls, self._call_at))
                if not all(layer.name in self._call_at for layer in self.layers):
                    stages = (
                        None  # a mask hook point the graph does not call as a module: its hook would not run
                    )
            self._stages = stages
        return self._stages

    @torch.no_grad()
    def _capture(self, name: str, resume: _Resume | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(design rows, output rows) of consumer ``name`` on the reference samples, current model state.

        With ``resume`` (staged), the forward starts from ``resume``'s cut where valid and
        stops right after ``name``; ``resume`` then holds the deepest cut passed.
        """
        module = self.model.get_submodule(name)
        inputs: list[torch.Tensor] = []
        outputs: list[torch.Tensor] = []
        first = 0

        def hook(_m: nn.Module, args: tuple, out: torch.Tensor) -> None:
            design, target = self._rows(module, args[0].detach(), out.detach(), first)
            inputs.append(design)
            outputs.append(target)

        stop = self._call_at.get(name) if resume is not None else None
        handle = module.register_forward_hook(hook)
        try:
            if resume is not None and stop is not None:
                resume.begin(stop)
            for b, part in enumerate(batches(len(self.x), self.batch_size)):
                xb = self.x[part]
                if resume is not None and stop is not None:
                    resume.step(self.model, b, xb, stop)
                else:
                    self.model(xb)
                first += len(xb)
            if resume is not None and stop is not None:
                resume.finish()
        finally:
            handle.remove()
        return torch.cat(inputs), torch.cat(outputs)

    def _capture_targets(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Each consumer's output rows in the unpruned model (the reconstruction targets)."""
        was_training = self.model.training
        self.model.eval()
        try:
            return {name: self._capture(name) for name in self._consumers_in_order()}
        finally:
            self.model.train(was_training)

    @torch.no_grad()
    def _least_squares(self, keep: dict[str, torch.Tensor]) -> None:
        """Refit each affected consumer, in forward order, to reproduce its unpruned output."""
        dead_inputs: dict[str, list[torch.Tensor]] = {}
        for fold in self._folds:
            dead = fold.dead_roots(keep)
            for consumer, idx, root in fold.consumers:
                if bool(dead[root].any()):
                    dead_inputs.setdefault(consumer, []).append(idx[dead[root]])
        stages = self._staging() if self.staged else None
        resume = _Resume(stages) if stages is not None else None
        for name in self._consumers_in_order():
            if name not in dead_inputs:
                continue
            module = self.model.get_submodule(name)
            assert isinstance(module, nn.Conv2d | nn.Linear)
            weight = module.weight
            fan_in = weight[0].numel()
            per_input = fan_in // (weight.shape[1])
            gone = torch.zeros(weight.shape[1], dtype=torch.bool)
            gone[torch.cat(dead_inputs[name])] = True
            alive_cols = (~gone).repeat_interleave(per_input).to(weight.device)
            # Refitting ``name`` below changes nothing before it: the cut ``resume`` keeps stays valid.
            x, _ = self._capture(name, resume)
            _, y = self._targets[name]
            a = x[:, alive_cols].double()
            target = y.double()
            if module.bias is not None:
                a = torch.cat([a, torch.ones(len(a), 1, dtype=a.dtype, device=a.device)], dim=1)
            if len(a) < 2 * a.shape[1]:
                continue  # too few reference rows for this many unknowns: keep the weights
            gram = a.T @ a
            lam = self.ridge * float(torch.diagonal(gram).mean()) + 1e-12
            gram.diagonal().add_(lam)
            solution = torch.linalg.solve(gram, a.T @ target)  # (d, out)
            flat = weight.reshape(weight.shape[0], -1)
            if module.bias is not None:
                module.bias.copy_(solution[-1].to(module.bias.dtype))
                solution = solution[:-1]
            flat[:, alive_cols] = solution.T.to(weight.dtype)
            weight.copy_(flat.reshape(weight.shape))

    def _fold(self, keep: dict[str, torch.Tensor]) -> None:
        for fold in self._folds:
            if fold.coupled:
                continue  # residual-stream channels are not folded (see the module docstring)
            dead = ~keep[fold.layer].to("cpu", torch.bool)
            if not bool(dead.any()):
                continue
            # Root channels of the group are the producer's output channels (one member).
            for consumer, idx, root in fold.consumers:
                gone = dead[root]
                if not bool(gone.any()):
                    continue
                module = self.model.get_submodule(consumer)
                assert isinstance(module, nn.Conv2d | nn.Linear)
                positions = idx[gone].to(module.weight.device)
                mu = self._means[consumer].to(module.weight.device)[positions]
                if isinstance(module, nn.Conv2d):
                    delta = torch.einsum("oikl,i->o", module.weight[:, positions], mu)
                else:
                    delta = module.weight[:, positions] @ mu
                if module.bias is not None:
                    module.bias.add_(delta)
                elif consumer in self._bn_after:
                    bn = self.model.get_submodule(self._bn_after[consumer])
                    assert isinstance(bn, _BN) and bn.running_mean is not None
                    bn.running_mean.sub_(delta)

    def _reestimate(self) -> None:
        norms = [m for m in self.model.modules() if isinstance(m, _BN)]
        if not norms:
            return
        momenta = [bn.momentum for bn in norms]
        self.model.eval()
        try:
            for bn in norms:
                bn.reset_running_stats()
                bn.momentum = None
                bn.train()
            with torch.no_grad():
                for part in batches(len(self.x), self.batch_size):
                    self.model(self.x[part])
        finally:
            for bn, momentum in zip(norms, momenta, strict=True):
                bn.momentum = momentum
            self.model.eval()

    def _snapshot(self) -> dict[str, torch.Tensor]:
        keep_names: set[str] = set()
        for name, module in self.model.named_modules():
            if isinstance(module, _BN) or any(name == c for f in self._folds for c, _, _ in f.consumers):
                keep_names.add(name)
        state = {}
        for name in keep_names:
            module = self.model.get_submodule(name)
            for key, tensor in [
                *module.named_parameters(recurse=False),
                *module.named_buffers(recurse=False),
            ]:
                if tensor is not None:
                    state[f"{name}.{key}" if name else key] = tensor.detach().clone()
        return state

    def _restore(self, state: dict[str, torch.Tensor]) -> None:
        current = dict(self.model.named_parameters()) | dict(self.model.named_buffers())
        with torch.no_grad():
            for key, value in state.items():
                current[key].copy_(value)

    @contextlib.contextmanager
    def applied(self, keep: dict[str, torch.Tensor]) -> Iterator[nn.Module]:
        """The model masked with ``keep`` and recovered, restored (weights, buffers, hooks) on exit."""
        was_training = self.model.training
        state = self._snapshot() if self.enabled else {}
        try:
            with masked(self.model, self.layers, keep):
                if "mean_fold" in self.methods:
                    with torch.no_grad():
                        self._fold(keep)
                if "least_squares" in self.methods:
                    self.model.eval()
                    self._least_squares(keep)
                if "bn_reestimate" in self.methods:
                    self._reestimate()
                self.model.eval()
                yield self.model
        finally:
            self._restore(state)
            self.model.train(was_training)

    def recovered_model(self, keep: dict[str, torch.Tensor]) -> nn.Module:
        """A copy of the model (no hooks) carrying the recovered weights and buffers for ``keep``.

        Masking it with ``keep`` gives the recovered masked model; structural removal
        of ``keep`` from it gives the exported model.
        """
        import copy

        with self.applied(keep):
            changed = self._snapshot()  # clones of the recovered tensors
        clone = copy.deepcopy(self.model)
        current = dict(clone.named_parameters()) | dict(clone.named_buffers())
        with torch.no_grad():
            for key, value in changed.items():
                current[key].copy_(value)
        return clone.eval()


def _foldable(module: nn.Module) -> bool:
    """A consumer whose weight columns are its input channels (not a grouped conv's per-group slice)."""
    return isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and module.groups == 1)


class _Resume:
    """Reference-set activations at one cut of the current model state: where the next staged capture starts."""

    def __init__(self, stages: _Stages) -> None:
        self.stages = stages
        self.cut = 0
        self.values: list[torch.Tensor] = []
        self._start = 0
        self._deepest: int | None = None
        self._new: list[torch.Tensor] = []

    def begin(self, stop: int) -> None:
        """Plan a capture that stops at node ``stop``: start from the kept cut if it lies at or before it."""
        if self.cut > stop:
            # The consumer at ``stop`` is refitted after this capture: a cut after it goes stale.
            self.cut, self.values = 0, []
        self._start = self.cut
        later = [c for c in self.stages.cuts if self._start < c <= stop]
        self._deepest = max(later, default=None)
        self._new = []

    def step(self, model: nn.Module, b: int, xb: torch.Tensor, stop: int) -> None:
        """Run batch ``b`` up to node ``stop``, keeping its value at the deepest cut passed."""
        # A clone: an in-place op after the cut must not alter the kept value.
        value = self.values[b].clone() if self._start else xb
        keep_at = {self._deepest} if self._deepest is not None else set()
        _, kept = self.stages.run(model, self._start, value, keep_at, stop=stop)
        if self._deepest is not None:
            self._new.append(kept[self._deepest].clone())

    def finish(self) -> None:
        if self._deepest is not None:
            self.cut, self.values = self._deepest, self._new
        self._new = []


def _inside_leaves(
    stages: _Stages, names: list[str], calls: dict[str, list[int]], once: dict[str, int]
) -> dict[str, int]:
    """Modules the graph runs only inside one module it calls once (a ViT attention's out_proj, heads).

    Such a module is reached only through that call, so a capture can stop right after
    the call's node, and a refit of the module leaves every cut up to that node valid.
    """
    used = {str(n.target).rpartition(".")[0] for n in stages.nodes if n.op == "get_attr"}
    inside: dict[str, int] = {}
    for name in names:
        if name in calls or any(u == name or u.startswith(name + ".") for u in used):
            continue
        owners = [c for c in once if name.startswith(c + ".")]
        if owners:
            inside[name] = once[max(owners, key=len)]
    return inside


def _solvable(module: nn.Module) -> bool:
    if isinstance(module, nn.Conv2d):
        return module.groups == 1 and not isinstance(module.padding, str)
    return isinstance(module, nn.Linear)


def recovered_curve(
    recovery: Recovery,
    order: PruneOrder,
    rates: list[float],
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    batch_size: int = 256,
) -> list[float]:
    """Top-1 accuracy at each rate of the masked **and recovered** model (nested masks of ``order``)."""
    from pxp.pruning.curve import accuracy

    accuracies = []
    for rate in rates:
        with recovery.applied(order.keep_masks(rate)) as model:
            accuracies.append(accuracy(model, x, y, batch_size))
    return accuracies
