"""The EchoForge model layer: CSM-1B speech generation with a placeholder fallback.

The API of the original EchoForge model package: create_csm_model, CSMModel, PlaceholderCSMModel and the
CSMModelError tree. torch and transformers are imported only when a CSM model is created.
"""

from worker.models.base import SAMPLE_RATE, Generated, Segment, SpeechModel, SpeechRequest
from worker.models.csm_model import SAMPLES_PER_FRAME, CSMModel, frame_budget
from worker.models.errors import CSMModelError, CSMModelLoadError, CSMModelNotFoundError
from worker.models.factory import create_csm_model
from worker.models.placeholder import PlaceholderCSMModel

__all__ = [
    "SAMPLES_PER_FRAME",
    "SAMPLE_RATE",
    "CSMModel",
    "CSMModelError",
    "CSMModelLoadError",
    "CSMModelNotFoundError",
    "Generated",
    "PlaceholderCSMModel",
    "Segment",
    "SpeechModel",
    "SpeechRequest",
    "create_csm_model",
    "frame_budget",
]
