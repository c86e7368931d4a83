"""The model layer's exceptions (the original EchoForge model package's names), in EchoForge's one error tree."""

from __future__ import annotations

from producer.errors import EchoForgeError, ErrorCode

__all__ = ["CSMModelError", "CSMModelLoadError", "CSMModelNotFoundError"]


class CSMModelError(EchoForgeError):
    """Base of every model-layer error; raised as is when generation fails (e.g. out of memory)."""

    code = ErrorCode.SYNTHESIS_FAILED


class CSMModelNotFoundError(CSMModelError):
    """No such local directory or hub repository, or a gated repository without a token."""

    code = ErrorCode.MODEL_UNAVAILABLE


class CSMModelLoadError(CSMModelError):
    """The files exist but cannot be loaded: corrupt, incompatible, or out of memory."""

    code = ErrorCode.MODEL_UNAVAILABLE
