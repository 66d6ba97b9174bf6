"""The gateway's torch-free pickle scan agrees with torch.load(weights_only=True) on real files."""

from __future__ import annotations

import pytest

from pxp.errors import InvalidModelError
from service.validation.pickle_scan import allowed_global, scan_torch_zip

torch = pytest.importorskip("torch")


def test_state_dicts_and_training_checkpoints_pass(tmp_path):
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2), torch.nn.Linear(2, 2))
    state = model.state_dict()
    for dtype in (torch.bfloat16, torch.float16, torch.uint8, torch.bool, torch.int64):
        state[f"extra_{dtype}"] = torch.zeros(2, dtype=dtype)
    for name, obj in {"sd": state, "ckpt": {"state_dict": state, "epoch": 3, "opt": {"lr": 0.1}}}.items():
        path = tmp_path / f"{name}.pt"
        torch.save(obj, path)
        scan_torch_zip(path)
        torch.load(path, weights_only=True)


def test_pickled_modules_are_refused_like_weights_only_does(tmp_path):
    path = tmp_path / "full.pt"
    torch.save(torch.nn.Linear(2, 2), path)
    with pytest.raises(InvalidModelError, match=r"torch\.nn\.modules\.linear\.Linear"):
        scan_torch_zip(path)
    with pytest.raises(Exception, match="weights_only"):
        torch.load(path, weights_only=True)


@pytest.mark.parametrize(
    "name",
    [
        "os.system",
        "posix.system",
        "builtins.eval",
        "builtins.getattr",
        "subprocess.Popen",
        "torch.load",
        "torch.nn.Module",
    ],
)
def test_dangerous_globals_are_not_allowed(name):
    assert not allowed_global(name)
