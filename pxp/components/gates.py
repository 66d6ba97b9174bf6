"""Convs that produce a multiplicative gate (squeeze-excitation), which are not prunable filters.

A pruned filter must contribute exactly nothing downstream. An SE block's expand conv
feeds a sigmoid whose output scales a channel: zeroing that conv's output gives a gate
of sigmoid(0) = 0.5 (hardsigmoid: 0.5), not 0, so the channel is halved rather than
removed. Those convs are left out of the prunable layers; the gated channel itself is
pruned through the conv that produces it.
"""

from __future__ import annotations

import torch
import torch.fx
from torch import nn

_GATE_MODULES = (nn.Sigmoid, nn.Hardsigmoid)
_GATE_FUNCTIONS = (torch.sigmoid, nn.functional.sigmoid, nn.functional.hardsigmoid)


def gate_convs(model: nn.Module) -> set[str]:
    """Names of the Conv2d modules whose output goes (only) into a sigmoid-like gate.

    Untraceable models give an empty set (their convs all stay prunable).
    """
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception:
        return set()
    modules = dict(model.named_modules())
    found: set[str] = set()
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(str(node.target)), nn.Conv2d):
            continue
        users = list(node.users)
        if users and all(
            (u.op == "call_module" and isinstance(modules.get(str(u.target)), _GATE_MODULES))
            or (u.op in ("call_function", "call_method") and u.target in (*_GATE_FUNCTIONS, "sigmoid"))
            for u in users
        ):
            found.add(str(node.target))
    return found
