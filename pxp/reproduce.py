"""Re-run a finished job from its ``provenance.json`` and say whether the result is the same.

Compared, in order: the inputs (checkpoint and data sha256, refused if they differ:
then nothing downstream could match), the loaded data, the sample ids of every
split, the chosen criterion's global ranking, the kept indices at the exported
rate, every curve's accuracies, and the exported weights tensor by tensor.

What holds where: on the same device type, library versions and thread count,
every step is deterministic and the result is bit-identical. Across devices (CPU
vs CUDA, or CPUs whose kernels use other vector widths) floating-point sums are
reduced in another order; scores then differ in their last bits (relative
~1e-6 in float32), which can swap components whose scores are that close and so
change a few kept indices. The report then shows how many ranks moved and how
much the kept sets overlap instead of just "differs".
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pxp.errors import InvalidSpecError
from pxp.hashing import sha256_file
from pxp.pipeline import ProgressCallback
from pxp.pipeline import run as run_job
from pxp.pipeline.provenance import PROVENANCE_NAME, source_sha256
from pxp.spec import JobSpec


@dataclass
class ReproduceReport:
    """The outcome: ``identical`` when nothing differs; each difference as a readable line."""

    identical: bool
    differences: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    rerun_dir: Path | None = None

    def summary(self) -> str:
        """Several lines for a terminal: the verdict, then the notes and differences."""
        head = "identical" if self.identical else f"differs ({len(self.differences)} difference(s))"
        lines = [head, *(f"note: {n}" for n in self.notes), *(f"- {d}" for d in self.differences)]
        return "\n".join(lines)


def read_provenance(directory: Path) -> dict[str, Any]:
    """``provenance.json`` of a job directory (or the one embedded in its manifest).

    Raises:
        InvalidSpecError: neither is there, or it is not a pxp provenance record.
    """
    path = directory / PROVENANCE_NAME
    if path.is_file():
        record = json.loads(path.read_text())
    elif (directory / "manifest.json").is_file():
        record = json.loads((directory / "manifest.json").read_text()).get("provenance")
    else:
        record = None
    if not isinstance(record, dict) or "spec" not in record:
        raise InvalidSpecError(f"{str(directory)!r} has no {PROVENANCE_NAME}: not a pxp job directory")
    return record


def _check_inputs(spec: JobSpec, record: dict[str, Any]) -> None:
    want = record.get("checkpoint", {}).get("sha256")
    if want is not None:
        path = spec.model.weights
        if not path or not Path(path).is_file():
            raise InvalidSpecError(f"the job's checkpoint {path!r} is not there; pass --weights PATH")
        got = sha256_file(path)
        if got != want:
            raise InvalidSpecError(f"checkpoint {path!r} has sha256 {got}, the job used {want}")
    want_data = record.get("data", {}).get("sha256")
    if want_data is not None:
        got_data = source_sha256(spec.data.source)
        if got_data is None:
            raise InvalidSpecError(f"the job's data {spec.data.source!r} is not there; pass --data PATH")
        if got_data != want_data:
            raise InvalidSpecError(
                f"data {spec.data.source!r} has sha256 {got_data}, the job used {want_data}"
            )


def _compare_orders(old: list[list[Any]], new: list[list[Any]]) -> str | None:
    if old == new:
        return None
    position = {tuple(entry): i for i, entry in enumerate(old)}
    moved = sum(1 for i, entry in enumerate(new) if position.get(tuple(entry)) != i)
    return f"ranking: {moved} of {len(old)} components at another rank"


def _compare_kept(old: dict[str, list[int]], new: dict[str, list[int]]) -> list[str]:
    out = []
    for layer in sorted(set(old) | set(new)):
        a, b = set(old.get(layer, [])), set(new.get(layer, []))
        if a != b:
            out.append(
                f"kept indices of {layer}: {len(a & b)} shared, {len(a - b)} only before, {len(b - a)} only now"
            )
    return out


def _compare_weights(old_dir: Path, new_dir: Path) -> list[str]:
    from safetensors.torch import load_file

    old_file, new_file = old_dir / "model.safetensors", new_dir / "model.safetensors"
    if not old_file.is_file() and not new_file.is_file():
        return []
    if not old_file.is_file() or not new_file.is_file():
        return ["exported weights: present in only one of the two runs"]
    old, new = load_file(str(old_file)), load_file(str(new_file))
    if set(old) != set(new):
        return [f"exported weights: tensor names differ ({sorted(set(old) ^ set(new))[:5]})"]
    out = []
    for name in sorted(old):
        a, b = old[name], new[name]
        if a.shape != b.shape:
            out.append(f"weight {name}: shape {tuple(a.shape)} vs {tuple(b.shape)}")
        elif not bool((a == b).all()):
            diff = float((a.double() - b.double()).abs().max())
            out.append(f"weight {name}: max |Δ| {diff:.3g}")
    return out


def _curves(directory: Path) -> dict[tuple[str, str], list[float]]:
    results = json.loads((directory / "results.json").read_text())
    return {(c["label"], c["split"]): c["accuracies"] for c in results["curves"]}


def reproduce(
    directory: str | Path,
    *,
    out_dir: str | Path | None = None,
    weights: str | None = None,
    data: str | None = None,
    progress: ProgressCallback | None = None,
) -> ReproduceReport:
    """Re-run the job recorded in ``directory`` and compare the two results.

    Args:
        directory: a finished job's output directory (``pxp compress --out``).
        out_dir: where the rerun writes (default: a temporary directory, removed after).
        weights, data: the checkpoint / data if they moved since the job ran; their
            sha256 must still match the record.
        progress: passed to :func:`pxp.pipeline.run`.

    Returns:
        A :class:`ReproduceReport`; ``identical`` is True when nothing differs.

    Raises:
        InvalidSpecError: no provenance in ``directory``, or the inputs are missing or
            not the ones the job used.
    """
    directory = Path(directory)
    record = read_provenance(directory)
    spec = JobSpec.model_validate(record["spec"])
    if weights is not None:
        spec = spec.model_copy(update={"model": spec.model.model_copy(update={"weights": weights})})
    if data is not None:
        spec = spec.model_copy(update={"data": spec.data.model_copy(update={"source": data})})
    _check_inputs(spec, record)

    with tempfile.TemporaryDirectory(prefix="pxp-reproduce-") as tmp:
        target = Path(out_dir) if out_dir is not None else Path(tmp)
        run_job(spec, target, progress)
        report = compare(directory, target)
        report.rerun_dir = Path(out_dir) if out_dir is not None else None
        return report


def compare(original: str | Path, rerun: str | Path) -> ReproduceReport:
    """Compare two finished job directories of the same spec (see the module docstring).

    Raises:
        InvalidSpecError: either directory has no provenance record.
    """
    original, rerun = Path(original), Path(rerun)
    record, fresh = read_provenance(original), read_provenance(rerun)
    report = ReproduceReport(identical=True)
    for key in ("versions", "device"):
        if record.get(key) != fresh.get(key):
            report.notes.append(f"{key} differ: {record.get(key)} vs {fresh.get(key)}")
    diffs: list[str] = []
    if record["data"].get("tensor_sha256") != fresh["data"].get("tensor_sha256"):
        diffs.append("loaded data differs (resizing or decoding changed)")
    for split in ("reference", "search", "test"):
        if record["samples"][split]["indices"] != fresh["samples"][split]["indices"]:
            diffs.append(f"{split} sample ids differ")
    if record["chosen"] != fresh["chosen"]:
        diffs.append(f"chosen: {record['chosen']} vs {fresh['chosen']}")
    moved = _compare_orders(record["order"], fresh["order"])
    if moved:
        diffs.append(moved)
    diffs += _compare_kept(record["kept_indices"], fresh["kept_indices"])
    old_curves, new_curves = _curves(original), _curves(rerun)
    for curve_key in sorted(set(old_curves) | set(new_curves)):
        if old_curves.get(curve_key) != new_curves.get(curve_key):
            label, split = curve_key
            diffs.append(
                f"curve {label} ({split}): {old_curves.get(curve_key)} vs {new_curves.get(curve_key)}"
            )
    diffs += _compare_weights(original, rerun)
    report.differences = diffs
    report.identical = not diffs
    return report
