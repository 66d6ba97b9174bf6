"""Torch-free job specifications and results.

These pydantic models are the contract between the CLI, the gateway, the
worker and the pipeline. They import nothing heavy, so the gateway can
validate a JobSpec without loading torch.
"""

from __future__ import annotations

import math
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

CriterionName = Literal["lrp", "gradient", "taylor", "integrated_gradients", "weight", "random"]
#: Every criterion name, in the order the CLI's ``--criterion all`` runs them.
CRITERIA: tuple[CriterionName, ...] = get_args(CriterionName)
Family = Literal["cnn", "vit"]
RuleName = Literal["epsilon", "gamma", "alpha_beta", "zplus"]
ComponentKind = Literal["filters", "heads", "neurons", "fc2"]
SoftmaxRule = Literal["attnlrp", "attnlrp_zplus", "cp_lrp"]
Aggregation = Literal["abs", "signed"]

#: Depth groups of a CNN composite, in forward order.
CNN_GROUPS: tuple[str, ...] = ("low", "mid", "high", "fc")
#: Depth groups of a ViT composite, in forward order.
VIT_GROUPS: tuple[str, ...] = ("early", "middle", "late", "fc")

DEFAULT_RATES: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(20))

#: Seeds are what numpy and torch both accept: 0 <= seed < 2**32.
MAX_SEED = 2**32 - 1
#: Device names a job may ask for: ``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``.
DEVICE_PATTERN = r"^(auto|cpu|mps|cuda(:[0-9]{1,3})?)$"


def _seed() -> Any:
    return Field(0, ge=0, le=MAX_SEED, description=f"0 <= seed <= {MAX_SEED}")


_PARAM_RANGES: dict[str, tuple[float, float]] = {
    "epsilon": (1e-9, 1.0),
    "gamma": (1e-3, 1.0),
    "alpha_beta": (1.0, 3.0),
}
_DEFAULT_PARAMS: dict[str, float | None] = {
    "epsilon": 1e-6,
    "gamma": 0.25,
    "alpha_beta": 2.0,
    "zplus": None,
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RuleSpec(_Strict):
    """One LRP rule. ``param`` is ε, γ or α (β = α − 1); z+ has none."""

    name: RuleName = "epsilon"
    param: float | None = None

    @model_validator(mode="after")
    def _fill_and_check(self) -> RuleSpec:
        if self.name == "zplus":
            self.param = None
            return self
        if self.param is None:
            self.param = _DEFAULT_PARAMS[self.name]
        low, high = _PARAM_RANGES[self.name]
        assert self.param is not None
        if not (low <= self.param <= high):
            raise ValueError(f"{self.name} parameter {self.param} outside [{low}, {high}]")
        return self


class CompositeSpec(_Strict):
    """An LRP composite: a rule per depth group, plus ViT-only softmax handling.

    Groups not named fall back to ε(1e-6), the 2024 paper's default for every group.
    """

    rules: dict[str, RuleSpec] = Field(default_factory=dict)
    softmax: SoftmaxRule = "attnlrp"

    def rule_for(self, group: str) -> RuleSpec:
        return self.rules.get(group, RuleSpec())

    @field_validator("rules")
    @classmethod
    def _known_groups(cls, value: dict[str, RuleSpec]) -> dict[str, RuleSpec]:
        known = set(CNN_GROUPS) | set(VIT_GROUPS)
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(f"unknown composite group(s) {unknown}; known: {sorted(known)}")
        return value


class AttributionSpec(_Strict):
    """Which criterion scores the components, and how."""

    criterion: CriterionName = "lrp"
    composite: CompositeSpec | None = None
    aggregation: Aggregation = "abs"
    ig_steps: int = Field(20, ge=2, le=512)
    batch_size: int = Field(32, ge=1, le=4096)
    seed: int = _seed()

    @property
    def label(self) -> str:
        return self.criterion

    def effective_composite(self) -> CompositeSpec:
        return self.composite or CompositeSpec()


class ModelSpec(_Strict):
    """An architecture by registry name, its constructor kwargs and a checkpoint path."""

    architecture: str
    kwargs: dict[str, Any] = Field(default_factory=dict)
    weights: str | None = None


class DataSpec(_Strict):
    """Labelled data: ``digits`` (bundled) or a path to an ImageFolder dir/archive or tensor file.

    ``image_size``, ``mean`` and ``std`` default to the architecture's preprocessing.
    """

    source: str = "digits"
    image_size: int | None = Field(None, ge=8, le=1024)
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    @field_validator("mean", "std")
    @classmethod
    def _finite_and_positive_std(
        cls, value: tuple[float, ...] | None, info: ValidationInfo
    ) -> tuple[float, ...] | None:
        if value is None:
            return value
        if not value:
            raise ValueError(f"{info.field_name} must have at least one value")
        if not all(math.isfinite(v) for v in value):
            raise ValueError(f"{info.field_name} values must be finite")
        if info.field_name == "std" and not all(v > 0 for v in value):
            raise ValueError("std values must be positive")
        return value


class SplitSpec(_Strict):
    """Seeded, class-balanced, disjoint reference / search / test splits."""

    reference_samples_per_class: int = Field(10, ge=1, le=10_000)
    search_fraction: float = Field(0.5, gt=0.0, lt=1.0)
    max_eval_samples: int | None = Field(None, ge=10)
    seed: int = _seed()


RecoveryName = Literal["bn_reestimate", "mean_fold", "least_squares"]


class PruneSpec(_Strict):
    """Which components are pruned and how the rate is chosen.

    ``recovery`` lists closed-form, train-free recoveries applied to the masked model
    at every evaluated rate and to the exported model (:mod:`pxp.pruning.recovery`).
    ``refine_steps`` bounds the bisection between grid rates that refines the safe
    rate on the search split when ``rate`` is not given (0 turns it off).
    """

    components: ComponentKind | None = None
    rates: list[float] = Field(default_factory=lambda: list(DEFAULT_RATES))
    normalize_per_layer: bool = False
    min_keep: int = Field(1, ge=1)
    max_accuracy_drop: float = Field(0.01, ge=0.0, le=1.0)
    exclude: list[str] = Field(default_factory=list)
    rate: float | None = Field(None, ge=0.0, lt=1.0)
    recovery: list[RecoveryName] = Field(default_factory=list)
    refine_steps: int = Field(6, ge=0, le=20)
    #: Rank channels removed together as one group (summed relevance): a residual stream's channel,
    #: a depthwise channel with the conv feeding it, a stripe across a grouped conv's groups.
    coupled: bool = False
    #: β in relevance / cost^β (cost: MACs saved by removing the component or group); 0 = the paper's ranking.
    cost_exponent: float = Field(0.0, ge=0.0, le=4.0)
    #: Keep a multiple of this many channels in every layer (coupled group, with ``coupled``), so no
    #: hardware block is left part-full: ``"auto"`` is the job device's block (16 on AVX-512 CPUs,
    #: 8 on CUDA and other CPUs; :mod:`pxp.pruning.hardware`). 1 = the paper's masks. Not applied
    #: to attention heads.
    round_to: int | Literal["auto"] = 1

    @field_validator("round_to")
    @classmethod
    def _check_round_to(cls, value: int | str) -> int | str:
        if isinstance(value, int) and not 1 <= value <= 1024:
            raise ValueError("round_to must be 'auto' or an integer from 1 to 1024")
        return value

    @field_validator("recovery")
    @classmethod
    def _ordered_recovery(cls, value: list[RecoveryName]) -> list[RecoveryName]:
        order: tuple[str, ...] = get_args(RecoveryName)
        return sorted(set(value), key=order.index)

    @field_validator("rates")
    @classmethod
    def _check_rates(cls, value: list[float]) -> list[float]:
        if not value:
            raise ValueError("rates must not be empty")
        if any(not (0.0 <= r < 1.0) for r in value):
            raise ValueError("every rate must be in [0, 1)")
        rates = sorted(set(value))
        if rates[0] != 0.0:
            rates.insert(0, 0.0)
        return rates


class SearchSpec(_Strict):
    """The Optuna search over LRP composites, and the objective that picks what is exported.

    ``objective="apr"`` (the paper's): the composite with the best A_PR, exported at
    its (refined) safe rate. ``"budget"``: after that, the ranking and recovery
    options (β ∈ {0, 0.5, 1}; recovery none / BN re-estimation / least squares + BN;
    coupled groups for CNNs) and rate that remove the most MACs within
    ``max_accuracy_drop`` on the search split (``pxp.pipeline.budget``).
    """

    objective: Literal["apr", "budget"] = "apr"
    #: What ``objective="budget"`` maximises within the drop: the MACs the cost model says each
    #: option's removal saves (exact, deterministic), or the speed-up of each option's removed
    #: model measured on the job's device (batch 32; what the user feels, but timing noise can
    #: make a rerun choose differently).
    budget_metric: Literal["macs", "latency"] = "macs"
    trials: int = Field(30, ge=1, le=10_000)
    timeout_s: float | None = Field(None, gt=0)
    sampler: Literal["tpe", "random"] = "tpe"
    median_pruning: bool = False
    #: Stop a trial as soon as its partial curve proves it cannot beat the best (exact; pxp.search.evaluator).
    exact_pruning: bool = True
    #: Stop the search once this many finished trials in a row did not raise the best A_PR (None: never).
    plateau_trials: int | None = Field(20, ge=1)
    storage: str | None = None
    study_name: str | None = None
    #: Set as the Optuna study's user attributes (the service sets ``job_id``, ``tenant`` and
    #: ``tenant_id``, so a study opened in optuna-dashboard says whose job it belongs to).
    study_user_attrs: dict[str, str] = Field(default_factory=dict)
    seed: int = _seed()
    search_aggregation: bool = True
    search_normalization: bool = True


ExportFormat = Literal["safetensors", "onnx", "torchscript"]


def _default_formats() -> list[ExportFormat]:
    return ["safetensors"]


class ExportSpec(_Strict):
    """What the export stage writes; ``measure_latency`` times original vs compressed on the job's device."""

    formats: list[ExportFormat] = Field(default_factory=_default_formats)
    enabled: bool = True
    measure_latency: bool = True
    #: Also export one checkpoint per accuracy drop (fractions, e.g. ``[0.005, 0.01, 0.02, 0.05]``),
    #: each at its own safe rate of the same ranking, with ``pareto.png`` (accuracy × measured
    #: speed-up); :mod:`pxp.pipeline.pareto`. Empty: only the main export.
    pareto_drops: list[float] = Field(default_factory=list, max_length=8)

    @field_validator("pareto_drops")
    @classmethod
    def _check_drops(cls, value: list[float]) -> list[float]:
        if any(not (0.0 < d < 1.0) for d in value):
            raise ValueError("every pareto drop must be a fraction in (0, 1), e.g. 0.01 for one point")
        return sorted(set(value))


class ExplainSpec(_Strict):
    """Explanations shipped with the job: LRP input heatmaps, per-layer statistics, the HTML report."""

    enabled: bool = True
    heatmaps_per_class: int = Field(1, ge=1, le=10)


class BaselineSpec(_Strict):
    """The sanity gate run before any work: the unpruned model must beat chance on the test split.

    A model near chance means the preprocessing (image size, mean/std, channels) or the
    checkpoint is wrong; every pruning rate would then look "safe". The job stops with
    :class:`~pxp.errors.BaselineAccuracyError` unless ``allow_low_accuracy`` is set, in
    which case it runs but reports no safe rate (0.0) and exports unpruned unless
    ``PruneSpec.rate`` is given.
    """

    #: Refuse below this unpruned accuracy too (absolute, 0–1), on top of the chance test.
    min_unpruned_accuracy: float | None = Field(None, ge=0.0, le=1.0)
    #: Run anyway on a model that fails the gate (benchmarks of random-weight models).
    allow_low_accuracy: bool = False


class JobSpec(_Strict):
    """A whole compression job."""

    model: ModelSpec
    data: DataSpec = Field(default_factory=DataSpec)
    criteria: list[AttributionSpec] = Field(default_factory=lambda: [AttributionSpec()])
    splits: SplitSpec = Field(default_factory=SplitSpec)
    prune: PruneSpec = Field(default_factory=PruneSpec)
    search: SearchSpec | None = None
    export: ExportSpec = Field(default_factory=ExportSpec)
    explain: ExplainSpec = Field(default_factory=ExplainSpec)
    baseline: BaselineSpec = Field(default_factory=BaselineSpec)
    device: str = Field("auto", pattern=DEVICE_PATTERN, description="auto, cpu, cuda, cuda:N or mps")

    @field_validator("criteria")
    @classmethod
    def _non_empty(cls, value: list[AttributionSpec]) -> list[AttributionSpec]:
        if not value:
            raise ValueError("at least one criterion is required")
        return value

    @model_validator(mode="after")
    def _search_needs_lrp(self) -> JobSpec:
        if self.search is not None and self.criteria[0].criterion != "lrp":
            raise ValueError("search tunes LRP: the first criterion must be 'lrp'")
        return self


class ProgressEvent(BaseModel):
    stage: str
    fraction: float = Field(ge=0.0, le=1.0)
    message: str = ""
    trial: int | None = None


class CurveResult(BaseModel):
    """One criterion's accuracy-vs-rate curve on one split."""

    label: str
    split: Literal["search", "test"] = "test"
    components: ComponentKind
    rates: list[float]
    accuracies: list[float]
    unpruned_accuracy: float
    apr: float
    safe_rate: float
    kept_per_layer: dict[str, int] = Field(default_factory=dict)
    params_removed_fraction: float | None = None
    flops_removed_fraction: float | None = None
    #: Per rate: fractions of MACs / parameters that structural removal saves (cost model; CNN only).
    macs_removed: list[float] | None = None
    params_removed: list[float] | None = None


class SearchResult(BaseModel):
    best_composite: CompositeSpec
    best_aggregation: Aggregation
    best_normalize_per_layer: bool
    search_apr_best: float
    search_apr_default: float
    test_apr_best: float
    test_apr_default: float
    trials_completed: int
    study_name: str
    storage: str


class JobResult(BaseModel):
    architecture: str
    family: Family
    num_classes: int
    class_names: list[str]
    split_sizes: dict[str, int]
    curves: list[CurveResult]
    chosen_label: str
    chosen_rate: float
    #: The fraction of components really pruned at ``chosen_rate`` (less than it under channel rounding).
    achieved_rate: float | None = None
    #: The channel rounding the ranking used (``PruneSpec.round_to`` resolved for the job's device).
    round_to: int = 1
    #: When the rate was refined between grid points: grid safe rate, refined rate, extra evaluations.
    rate_refinement: dict[str, Any] | None = None
    #: With the ``budget`` objective: every option tried on the search split and the one chosen.
    budget: dict[str, Any] | None = None
    search: SearchResult | None = None
    compression: dict[str, Any] | None = None
    #: With ``export.pareto_drops``: per drop, the exported point (rate, test accuracy, MACs, speed-up, files).
    pareto: list[dict[str, Any]] | None = None
    artifacts: dict[str, str] = Field(default_factory=dict)
