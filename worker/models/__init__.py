"""The EchoForge model layer: CSM-1B speech generation with a placeholder fallback."""

from worker.models.base import SAMPLE_RATE, SpeechModel
from worker.models.errors import CSMModelError, CSMModelLoadError, CSMModelNotFoundError
from worker.models.placeholder import PlaceholderCSMModel

__all__ = [
    "SAMPLE_RATE",
    "CSMModelError",
    "CSMModelLoadError",
    "CSMModelNotFoundError",
    "PlaceholderCSMModel",
    "SpeechModel",
]
