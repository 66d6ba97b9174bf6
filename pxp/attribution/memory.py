"""Choosing the attribution batch size from the memory actually free, so the defaults never run out.

A backward pass through an LRP composite holds, per sample, every layer's
output for the backward (autograd), the rule's modified forward (zennit's rules
recompute each layer with modified weights and keep that graph too), the
gradients retained at the hook points, and the hook's clone of each hook-point
output. :data:`ACTIVATION_FACTOR` times one sample's summed module outputs
bounds that: measured on torchvision resnet50 at 224×224 with ``bench/attribution_speed.py
--memory`` (peak RSS grows by about 2.6× the summed outputs per added sample),
rounded up for safety.

The batch is then the requested one, capped so that the estimate stays within
:data:`MEMORY_FRACTION` of the free memory: CUDA's ``mem_get_info``, else the
smaller of ``MemAvailable`` (``/proc/meminfo``) and the cgroup's headroom. The
cap only ever lowers the requested batch size; scores are sums over samples, so
they do not depend on it beyond float rounding.

On a CPU the estimate is also held within :data:`CPU_BATCH_BYTES`, because a
bigger LRP batch is not faster per image there, only bigger: a conv at 224×224
already fills the core with one sample. ``bench/attribution_speed.py --memory
--models resnet50 vit_b_16 --threads 1`` (224×224, random weights, 16 images,
1 thread, load about 2) scored resnet50 at 1.01, 1.15, 1.18 and 1.09 images/s at
batches 1, 2, 4 and 8 while peak RSS grew by about 513 MB per sample; the capped
batch (2) scored 1.16 images/s at 2.7 GB peak RSS, where batch 8 peaked at 5.9 GB.
On a CUDA device a bigger batch is what makes it fast, so only the free memory
bounds it there.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from torch import nn

#: Per-sample peak ≈ this × the sample's summed module outputs (see the module docstring).
ACTIVATION_FACTOR = 4.0
#: Share of the free memory a batch may plan to use.
MEMORY_FRACTION = 0.5
#: Assumed free memory when the system does not say (no /proc, no CUDA query).
FALLBACK_BYTES = 2 << 30
#: Most a batch may plan to use on a CPU, where bigger batches stop paying (module docstring).
CPU_BATCH_BYTES = 1 << 30


def _read_int(path: Path) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        text = path.read_text().strip()
        return None if text == "max" else int(text)
    return None


def available_bytes(device: torch.device) -> int:
    """Memory free for new tensors on ``device`` now."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    candidates: list[int] = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                candidates.append(int(line.split()[1]) * 1024)
    limit = _read_int(Path("/sys/fs/cgroup/memory.max"))
    used = _read_int(Path("/sys/fs/cgroup/memory.current"))
    if limit is not None and used is not None:
        candidates.append(max(limit - used, 0))
    return min(candidates) if candidates else FALLBACK_BYTES


@torch.no_grad()
def output_bytes_per_sample(model: nn.Module, example: torch.Tensor) -> int:
    """Summed sizes of every leaf module's output for one sample (one forward, no gradients)."""
    total = 0

    def count(_module: nn.Module, _inputs: tuple, output: object) -> None:
        nonlocal total
        outputs = output if isinstance(output, tuple | list) else (output,)
        total += sum(t.numel() * t.element_size() for t in outputs if isinstance(t, torch.Tensor))

    handles = [m.register_forward_hook(count) for m in model.modules() if not list(m.children())]
    try:
        model(example[:1])
    finally:
        for handle in handles:
            handle.remove()
    return total + example[:1].numel() * example.element_size()


def batch_budget_bytes(device: torch.device) -> float:
    """What one attribution batch may plan to use on ``device``: a share of the free memory, on CPUs capped."""
    budget = MEMORY_FRACTION * available_bytes(device)
    return budget if device.type == "cuda" else min(budget, float(CPU_BATCH_BYTES))


def fit_batch_size(model: nn.Module, x: torch.Tensor, requested: int) -> int:
    """``requested``, lowered (to at least 1) so that one batch's backward fits :func:`batch_budget_bytes`."""
    if len(x) <= 1 or requested <= 1:
        return max(1, requested)
    per_sample = ACTIVATION_FACTOR * output_bytes_per_sample(model, x)
    fits = int(batch_budget_bytes(x.device) // max(per_sample, 1.0))
    return max(1, min(requested, fits))
