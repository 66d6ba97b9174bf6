"""Domain errors of pxp.

They carry no HTTP codes: the service maps them to responses in one place.
``UserError`` subclasses are the caller's fault (bad checkpoint, bad data, bad
spec); everything else is an internal failure.
"""

from __future__ import annotations


class PxpError(Exception):
    """Base of every error pxp raises on purpose."""

    @property
    def type_name(self) -> str:
        return type(self).__name__


class UserError(PxpError):
    """The input was wrong; retrying with the same input fails again."""


class InvalidSpecError(UserError):
    """A JobSpec / SearchSpec / PruneSpec is inconsistent or out of range."""


class InvalidModelError(UserError):
    """A checkpoint is unreadable, unsafe, or does not fit the architecture."""


class UnsupportedArchitectureError(UserError):
    """The architecture name is unknown or its family is not supported."""


class InvalidDataError(UserError):
    """Reference data is unreadable, unsafe or unusable (one class, empty class, ...)."""


class BaselineAccuracyError(UserError):
    """The unpruned model is near chance on the user's data: wrong preprocessing or checkpoint."""


class VerificationError(PxpError):
    """An internal consistency check failed (e.g. removed model != masked model)."""


class JobCancelledError(PxpError):
    """Raised from a progress callback to stop a job between stages or trials."""
