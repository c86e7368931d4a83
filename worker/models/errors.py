"""The model layer's exception tree (kept from the original EchoForge model package)."""

from __future__ import annotations

__all__ = ["CSMModelError", "CSMModelLoadError", "CSMModelNotFoundError"]


class CSMModelError(Exception):
    """Base of every model-layer error."""


class CSMModelNotFoundError(CSMModelError):
    """No such local directory or hub repository, or a gated repository without a token."""


class CSMModelLoadError(CSMModelError):
    """The files exist but cannot be loaded: corrupt, incompatible, or out of memory."""
