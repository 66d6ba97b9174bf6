"""The pruning curve, evaluated on physically smaller models, with accuracies identical to masking.

:func:`fast_curve` returns exactly what :func:`pxp.pruning.curve.masked_curve`
returns, faster, by three means:

1. **Slicing.** Each rate runs a removed copy of the model (the same plan and
   slicing as :func:`~pxp.pruning.removal.remove_pruned`), so its cost falls
   with the rate.
2. **Reusing what did not change.** Masks are nested, and a global ranking
   often leaves the first layers untouched for many rates (wide layers spread
   their relevance thin and go first). The model is cut (torch.fx) at points
   where one tensor carries everything forward; the activations at a cut are
   kept while no module before it changes, and later rates start from there.
   The reused values are bitwise those a full run would compute. A cut stays valid
   until a module before it is called (or has a parameter of its own read) with a
   changed cut; every rate runs staged, with stacked residual sums as additions
   (:func:`_fuse_pair_sums`, same values).
3. **Ties go to the reference.** Removal changes float32 summation order, so
   logits move by ~1e-6 relative; a prediction could flip only where the top
   two logits are that close. Any batch in which a sample's margin is below
   ``tie_rtol`` × its max |logit| is re-evaluated with masking, in the same batch as
   ``masked_curve`` uses, so its predictions are the reference's own. A
   self-check at the start measures the removal error against masking on a
   few samples and refuses to run (:class:`VerificationError`) if it is not
   far below that margin.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx
from torch import nn

from pxp.attribution.engine import batches
from pxp.components import Family, PrunableLayer
from pxp.errors import VerificationError
from pxp.pruning.masking import masked
from pxp.pruning.ranking import PruneOrder
from pxp.pruning.removal import removal_planner
from pxp.pruning.removal.plan import Planner, RemovalPlan, cut_copy

#: A batch where some sample's top-2 logit margin is below this × its max |logit| is re-evaluated with masking.
TIE_RTOL = 1e-5
#: The self-check requires the removal error to stay below this fraction of the tie margin.
SAFETY = 0.1


@dataclass
class SweepStats:
    """What :func:`fast_curve` did, for benchmarks and logs."""

    #: Per rate: index of the fx node the evaluation started from (0: the input; -1: masks equal
    #: to the previous rate's, accuracy reused).
    start_nodes: list[int] = field(default_factory=list)
    #: Per rate: batches re-evaluated with masking because of near ties.
    fallback_batches: list[int] = field(default_factory=list)
    #: Largest relative removal error seen by the self-check.
    self_check_error: float = 0.0
    nodes: int = 0
    seconds: float = 0.0


class _LeafAttentionTracer(torch.fx.Tracer):
    """Keeps explicit attention modules whole: their head count changes per rate and must not be baked in."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        from pxp.components.vit.modules import ExplicitSelfAttention

        return isinstance(m, ExplicitSelfAttention) or super().is_leaf_module(m, module_qualified_name)


class _Stages:
    """The model as an fx graph, runnable from any *cut*: a node position where one value carries everything."""

    def __init__(self, model: nn.Module) -> None:
        # Optional forward arguments (timm's attn_mask, is_causal) are traced at their defaults.
        params = list(inspect.signature(model.forward).parameters.values())[1:]
        concrete = {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}
        graph = _LeafAttentionTracer().trace(model, concrete_args=concrete or None)
        _fuse_pair_sums(graph)
        self.nodes = list(graph.nodes)
        self.position = {node: i for i, node in enumerate(self.nodes)}
        self.last_use = [
            max((self.position[u] for u in n.users), default=i) for i, n in enumerate(self.nodes)
        ]
        self.placeholder = next(n for n in self.nodes if n.op == "placeholder")
        #: Cut position -> the one value alive there.
        self.cuts: dict[int, torch.fx.Node] = {}
        for i, node in enumerate(self.nodes):
            live = [n for n in self.nodes[:i] if self.last_use[self.position[n]] >= i]
            if len(live) == 1 and live[0].op != "placeholder" and node.op != "output":
                self.cuts[i] = live[0]
        # First node that touches each module: directly, through an ancestor called as a whole, or
        # through a parameter of its own read by a traced-through module (get_attr "<module>.weight").
        # A parameter read touches only its owner: the ViT's "encoder.pos_embedding" at the start of
        # the graph says nothing about the encoder's blocks (counting them as touched there made
        # every rate restart after the patch embedding).
        names = [name for name, _ in model.named_modules() if name]
        self.first_use: dict[str, int] = {}
        for i, node in enumerate(self.nodes):
            if node.op == "call_module":
                used = str(node.target)
                touched = [name for name in names if name == used or name.startswith(used + ".")]
            elif node.op == "get_attr":
                touched = [str(node.target).rpartition(".")[0]]
            else:
                continue
            for name in touched:
                if name and name not in self.first_use:
                    self.first_use[name] = i  # "": a parameter of the root module itself (a class token)

    def signatures(self, plan: RemovalPlan) -> dict[int, int]:
        """Per cut, the identity of every planned change before it: equal identities, equal activations there."""
        changes = sorted(
            (self.first_use.get(name, 0), name, cut.signature()) for name, cut in plan.cuts.items()
        )
        out: dict[int, int] = {}
        identity, j = hash(()), 0
        for position in sorted(self.cuts):
            while j < len(changes) and changes[j][0] < position:
                identity = hash((identity, changes[j][1:]))
                j += 1
            out[position] = identity
        return out

    def run(
        self,
        model: nn.Module,
        start: int,
        value: torch.Tensor,
        keep_at: set[int],
        stop: int | None = None,
    ) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """Evaluate from cut ``start`` (0: ``value`` is the input); return the output and the values at ``keep_at``.

        With ``stop``, the run ends right after node ``stop`` and returns that node's value.
        """
        modules = dict(model.named_modules())
        env: dict[torch.fx.Node, Any] = {self.cuts[start] if start else self.placeholder: value}
        kept: dict[int, torch.Tensor] = {}
        for i in range(start, len(self.nodes)):
            if i in keep_at:
                kept[i] = env[self.cuts[i]]
            node = self.nodes[i]
            if node.op == "placeholder":
                if node is not self.placeholder:
                    env[node] = node.args[0] if node.args else None  # a concrete (default) argument
                continue
            args = torch.fx.node.map_arg(node.args, lambda n: env[n])
            kwargs = torch.fx.node.map_arg(node.kwargs, lambda n: env[n])
            if node.op == "output":
                return args[0], kept
            if node.op == "call_module":
                env[node] = modules[str(node.target)](*args, **kwargs)
            elif node.op == "call_function":
                env[node] = node.target(*args, **kwargs)  # type: ignore[operator]  # FX types target as Callable | str; call_function nodes hold a callable
            elif node.op == "call_method":
                self_obj, *rest = args
                env[node] = getattr(self_obj, str(node.target))(*rest, **kwargs)
            elif node.op == "get_attr":
                env[node] = _fetch_attr(model, str(node.target))
            if i == stop:
                return env[node], kept
            for used in node.all_input_nodes:
                if self.last_use[self.position[used]] <= i:
                    env.pop(used, None)
        raise RuntimeError("fx graph has no output node")


def _pair_add(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``torch.stack([x, y], -1).sum(-1)``, bitwise, without materialising the stack.

    The reduction adds onto +0, so a sum of two -0.0 is +0.0 where ``x + y`` is -0.0;
    adding +0.0 afterwards changes exactly that case and nothing else.
    """
    return torch.add(x, y).add_(0.0)


def _fuse_pair_sums(graph: torch.fx.Graph) -> None:
    """Rewrite every ``sum(stack([a, b], dim=-1), dim=-1)`` into :func:`_pair_add` (same values).

    The explicit ViT's residual sums are zennit ``Sum`` modules over stacked operands,
    so LRP can split relevance between the two; for evaluation the stack is a full
    copy of both operands and the reduction a slow strided pass (together 38 % of a
    sliced digits-ViT evaluation, torch profiler). A plain addition computes the same
    numbers.
    """

    def dim_of(node: torch.fx.Node) -> object:
        return node.kwargs["dim"] if "dim" in node.kwargs else (node.args[1] if len(node.args) > 1 else None)

    for node in list(graph.nodes):
        if node.op != "call_function" or node.target is not torch.sum or len(node.args) < 1:
            continue
        stacked = node.args[0]
        if (
            not isinstance(stacked, torch.fx.Node)
            or stacked.op != "call_function"
            or stacked.target is not torch.stack
            or len(stacked.users) != 1
            or dim_of(node) != -1
            or dim_of(stacked) != -1
            or set(node.kwargs) - {"dim"}
            or len(node.args) > 2
            or set(stacked.kwargs) - {"dim"}
            or len(stacked.args) > 2
        ):
            continue
        operands = stacked.args[0]
        if not isinstance(operands, list | tuple) or len(operands) != 2:
            continue
        with graph.inserting_before(node):
            added = graph.call_function(_pair_add, tuple(operands))
        node.replace_all_uses_with(added)
        graph.erase_node(node)
        graph.erase_node(stacked)


def _fetch_attr(model: nn.Module, target: str) -> Any:
    obj: Any = model
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _trace(model: nn.Module, probe: nn.Module, x: torch.Tensor) -> _Stages | None:
    """The staged form of ``model``, or None if it cannot be traced or does not run ``probe`` (a cut copy) exactly.

    The probe catches sizes that tracing froze into the graph as constants.
    """
    try:
        stages = _Stages(model)
        with torch.no_grad():
            staged, _ = stages.run(probe, 0, x, set())
            if torch.equal(staged, probe(x)):
                return stages
    except Exception:
        pass
    return None


def _rate_model(prepared: nn.Module, plan: RemovalPlan) -> nn.Module:
    """The removed model of one rate; it only runs forwards, so it shares the unchanged tensors."""
    return cut_copy(prepared, plan.cuts, share_unchanged=True).eval()


def _family(order: PruneOrder) -> Family:
    return "cnn" if order.layers[0].kind == "filters" else "vit"


def _relative(logits: torch.Tensor) -> torch.Tensor:
    """Per-sample scale: max |logit| (never 0)."""
    return logits.abs().amax(-1).clamp_min(1e-30)


def _predictions(logits: torch.Tensor, tie_rtol: float) -> tuple[torch.Tensor, bool]:
    """Argmax per sample, and whether some sample's top-2 margin is too small to trust."""
    if not bool(torch.isfinite(logits).all()):
        return logits.argmax(-1), True
    if logits.shape[-1] < 2:
        return logits.argmax(-1), False
    top = logits.topk(2, dim=-1).values
    return logits.argmax(-1), bool(((top[:, 0] - top[:, 1]) <= tie_rtol * _relative(logits)).any())


@torch.no_grad()
def _self_check(
    prepared: nn.Module,
    layers: list[PrunableLayer],
    plans: list[RemovalPlan],
    masks: list[dict[str, torch.Tensor]],
    x: torch.Tensor,
    tie_rtol: float,
) -> float:
    """Relative removal error on a few samples at the middle and highest rates; raise if not far below ties."""
    worst = 0.0
    sample = x[: min(len(x), 16)]
    for i in sorted({len(plans) // 2, len(plans) - 1}):
        with masked(prepared, layers, masks[i]):
            want = prepared(sample)
        got = _rate_model(prepared, plans[i])(sample)
        worst = max(worst, float(((got - want).abs().amax(-1) / _relative(want)).max()))
    if not worst <= SAFETY * tie_rtol:
        raise VerificationError(
            f"removed models differ from masking by {worst:.3g} relative, not safely below the tie margin "
            f"{tie_rtol:g}; use masked_curve"
        )
    return worst


def _wanted_cuts(stages: _Stages, signatures: list[dict[int, int]], k: int, start: int) -> list[int]:
    """Cuts after ``start`` worth keeping at rate ``k``: for each later rate, the deepest one still valid there.

    Nearest later rates first; by nesting, a cut valid at rate ``j`` is valid at every rate between.
    """
    wanted: list[int] = []
    for j in range(k + 1, len(signatures)):
        valid = [c for c in stages.cuts if c > start and signatures[j][c] == signatures[k][c]]
        if valid and max(valid) not in wanted:
            wanted.append(max(valid))
    return wanted


@torch.no_grad()
def fast_curve(
    prepared: nn.Module,
    order: PruneOrder,
    rates: list[float],
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    batch_size: int = 256,
    reuse: bool = True,
    cache_bytes: int = 1 << 30,
    tie_rtol: float = TIE_RTOL,
    planner: Planner | None = None,
    on_rate: Callable[[int, float, float], None] | None = None,
    stats: SweepStats | None = None,
) -> list[float]:
    """Top-1 accuracy at each rate, identical to ``masked_curve(prepared, order, rates, x, y, batch_size=...)``.

    ``cache_bytes`` bounds the activations kept for reuse (0 or ``reuse=False``
    disables reuse). ``planner`` (from :func:`removal_planner`) may be passed to
    reuse a dependency analysis. Rates are evaluated in the order given.
    """
    started = time.perf_counter()
    stats = stats if stats is not None else SweepStats()
    layers = list(order.layers)
    family = _family(order)
    if planner is None:
        planner = removal_planner(prepared, family, layers, x[:1])
    masks = [order.keep_masks(rate) for rate in rates]
    plans = [planner.plan(keep) for keep in masks]
    stats.self_check_error = _self_check(prepared, layers, plans, masks, x, tie_rtol)
    probe = _rate_model(prepared, plans[-1])
    stages = _trace(prepared, probe, x[: min(len(x), 4)]) if reuse and cache_bytes > 0 else None
    del probe
    stats.nodes = len(stages.nodes) if stages is not None else 0
    # Per rate and cut: identity of every module before the cut; equal identities mean equal activations.
    signatures = [stages.signatures(p) for p in plans] if stages else []
    parts = list(batches(len(x), batch_size))
    #: cut -> (signature it was computed under, activations per batch)
    cache: dict[int, tuple[int, list[torch.Tensor]]] = {}
    accuracies: list[float] = []
    for k, (rate, keep, plan) in enumerate(zip(rates, masks, plans, strict=True)):
        if k and all(torch.equal(keep[name], masks[k - 1][name]) for name in keep):
            # Same masks as the previous rate (min_keep caps the count): same predictions.
            stats.start_nodes.append(-1)
            stats.fallback_batches.append(0)
            accuracies.append(accuracies[-1])
            if on_rate is not None:
                on_rate(k, rate, accuracies[-1])
            continue
        model = _rate_model(prepared, plan)
        start, wanted = 0, []
        if stages is not None:
            cache = {c: entry for c, entry in cache.items() if entry[0] == signatures[k][c]}
            start = max(cache, default=0)
            wanted = _wanted_cuts(stages, signatures, k, start)
        stats.start_nodes.append(start)
        stored: dict[int, list[torch.Tensor]] = {c: [] for c in wanted}
        correct, fallbacks = 0, 0
        for b, part in enumerate(parts):
            if stages is not None:
                value = cache[start][1][b] if start else x[part]
                logits, kept = stages.run(model, start, value, set(stored))
                for c, t in kept.items():
                    stored[c].append(t)
                if b == 0:
                    stored = _within_budget(stored, len(x) / len(x[part]), cache_bytes - _cached_bytes(cache))
            else:
                logits = model(x[part])
            predicted, tie = _predictions(logits, tie_rtol)
            if tie:
                fallbacks += 1
                with masked(prepared, layers, keep):
                    predicted = prepared(x[part]).argmax(-1)
            correct += int((predicted == y[part]).sum())
        for c, values in stored.items():
            cache[c] = (signatures[k][c], values)
        stats.fallback_batches.append(fallbacks)
        accuracies.append(correct / max(len(x), 1))
        if on_rate is not None:
            on_rate(k, rate, accuracies[-1])
        del model
    stats.seconds = time.perf_counter() - started
    return accuracies


def _within_budget(
    stored: dict[int, list[torch.Tensor]], scale: float, budget: float
) -> dict[int, list[torch.Tensor]]:
    """The stored cuts (in preference order) whose full-set size, extrapolated from the first batch, fits."""
    kept: dict[int, list[torch.Tensor]] = {}
    for c, values in stored.items():
        size = sum(t.numel() * t.element_size() for t in values) * scale
        if size <= budget:
            kept[c] = values
            budget -= size
    return kept


def _cached_bytes(cache: dict[int, tuple[int, list[torch.Tensor]]]) -> int:
    return sum(t.numel() * t.element_size() for _, values in cache.values() for t in values)
