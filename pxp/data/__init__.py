"""Reference data: bundled digits, ImageFolder dirs/archives, tensor files; class-balanced splits."""

from __future__ import annotations

from pxp.data.digits import HELDOUT_FRACTION, load_digits_data
from pxp.data.labelled import LabelledData
from pxp.data.load import MAX_ARCHIVE_BYTES, MAX_MEMBERS, load_data
from pxp.data.splits import Splits, make_splits

__all__ = [
    "HELDOUT_FRACTION",
    "MAX_ARCHIVE_BYTES",
    "MAX_MEMBERS",
    "LabelledData",
    "Splits",
    "load_data",
    "load_digits_data",
    "make_splits",
]
