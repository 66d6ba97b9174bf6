"""The spec's criterion names and the registered implementations are one list."""

from pxp import spec
from pxp.attribution import CRITERIA


def test_every_spec_criterion_is_implemented_and_nothing_else() -> None:
    assert set(CRITERIA) == set(spec.CRITERIA)
    assert spec.CRITERIA == ("lrp", "gradient", "taylor", "integrated_gradients", "weight", "random")
