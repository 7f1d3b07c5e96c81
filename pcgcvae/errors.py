"""Exceptions with messages that name the problem.

Every failure a user can cause (bad operator, bad checkpoint, bad option) is
raised as one of these; inside a PETSc callback petsc4py turns it into a
``PETSc.Error`` that carries the message.
"""


class PCGCVAEError(ValueError):
    """Base class of the errors raised by pcgcvae."""


class OperatorError(PCGCVAEError):
    """The operator cannot be preconditioned (not square, not SPD-like, ...)."""


class CheckpointError(PCGCVAEError):
    """A checkpoint is missing, corrupt, foreign or incompatible."""


class OptionError(PCGCVAEError):
    """An option has a value outside its domain."""
