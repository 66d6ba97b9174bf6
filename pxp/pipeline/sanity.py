"""The sanity gate run before any work: the unpruned model must beat chance on the user's data.

A model evaluated with the wrong preprocessing (a 32×32 model fed 224×224 images, the
wrong mean/std or channel count) or with a checkpoint that does not match the
architecture is at chance. Pruning it changes nothing measurable, so every rate would
be "within one point" of the unpruned accuracy and be called safe. The gate measures
the unpruned accuracy first and stops the job with a :class:`BaselineAccuracyError`
that says what was measured, what chance is, which preprocessing was used and what
to try.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from pxp.errors import BaselineAccuracyError
from pxp.pruning.curve import accuracy
from pxp.spec import BaselineSpec, CurveResult

if TYPE_CHECKING:
    from pxp.pipeline.state import JobState


@dataclass(frozen=True)
class Preprocessing:
    """How the images were turned into model inputs, and where each setting came from."""

    image_size: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    #: ``"spec"``, ``"checkpoint"`` or ``"architecture default"``, per setting.
    sources: dict[str, str]

    def describe(self) -> str:
        """One line: ``image size 224 (architecture default), 3 channels, mean (...), std (...)``."""

        def fmt(values: tuple[float, ...]) -> str:
            return "(" + ", ".join(f"{v:.3g}" for v in values) + ")"

        src = self.sources
        return (
            f"image size {self.image_size} ({src.get('image_size', 'architecture default')}), "
            f"{self.channels} channel(s) ({src.get('channels', 'architecture default')}), "
            f"mean {fmt(self.mean)} ({src.get('mean', 'architecture default')}), "
            f"std {fmt(self.std)} ({src.get('std', 'architecture default')})"
        )


@dataclass(frozen=True)
class BaselineCheck:
    """The gate's measurement: unpruned accuracy against the chance level of the split."""

    accuracy: float
    #: Accuracy of always answering the most frequent class of the split.
    chance: float
    #: Accuracies at or below this are refused (``min_unpruned_accuracy`` raises it).
    threshold: float
    samples: int
    passed: bool


def chance_threshold(chance: float) -> float:
    """The accuracy a working model must exceed: chance plus half of chance × (1 − chance).

    10 classes: 0.145; 2 classes: 0.625; 1000 classes: ≈ 0.0015. A model trained on the
    data but fed wrongly preprocessed images lands at chance (often exactly, predicting
    one class), well below this; a model that learnt anything lands well above it.
    """
    return chance + 0.5 * chance * (1.0 - chance)


def measure_baseline(model: nn.Module, x: torch.Tensor, y: torch.Tensor, spec: BaselineSpec) -> BaselineCheck:
    """Unpruned accuracy of ``model`` on ``(x, y)`` and whether it passes the gate of ``spec``."""
    acc = accuracy(model, x, y)
    counts = torch.bincount(y.cpu())
    chance = float(counts.max()) / max(len(y), 1)
    threshold = chance_threshold(chance)
    passed = acc > threshold
    if spec.min_unpruned_accuracy is not None:
        threshold = max(threshold, spec.min_unpruned_accuracy)
        passed = passed and acc >= spec.min_unpruned_accuracy
    return BaselineCheck(accuracy=acc, chance=chance, threshold=threshold, samples=len(y), passed=passed)


def check_baseline(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    spec: BaselineSpec,
    preprocessing: Preprocessing,
    architecture: str,
) -> BaselineCheck:
    """:func:`measure_baseline`, raising when it fails and ``spec.allow_low_accuracy`` is off.

    Raises:
        BaselineAccuracyError: the unpruned accuracy is at or below the threshold, with the
            measured accuracy, chance level, preprocessing used and what to try.
    """
    check = measure_baseline(model, x, y, spec)
    if check.passed or spec.allow_low_accuracy:
        return check
    if spec.min_unpruned_accuracy is not None and check.accuracy > chance_threshold(check.chance):
        why = f"below the required minimum {spec.min_unpruned_accuracy:.3f} (min_unpruned_accuracy)"
    else:
        why = f"near chance ({check.chance:.3f}, the most frequent class's share; refused at ≤ {check.threshold:.3f})"
    raise BaselineAccuracyError(
        f"the unpruned {architecture} scores {check.accuracy:.3f} top-1 on the {check.samples} test samples, "
        f"{why}. Pruning a model that does not work on this data would call every rate safe, so the job stops "
        f"before any work. Preprocessing used: {preprocessing.describe()}. Most likely the images are not "
        "preprocessed as in training, or the checkpoint does not match the architecture/kwargs. Try: "
        "--image-size N (DataSpec.image_size) with the size the model was trained at; --mean/--std "
        "(DataSpec.mean/std) with the training normalisation; the model kwargs the checkpoint was built with. "
        "To run anyway (no rate is then called safe), pass --allow-low-accuracy (JobSpec.baseline.allow_low_accuracy)."
    )


def no_safe_rate_unless_baseline_passed(state: JobState, result: CurveResult) -> CurveResult:
    """``result`` with ``safe_rate`` 0.0 when the job's baseline failed the gate (under the override).

    A rate is never called safe relative to a model that does not work on the data.
    """
    if state.baseline is None or state.baseline.passed:
        return result
    return result.model_copy(update={"safe_rate": 0.0})
