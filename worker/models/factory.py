"""create_csm_model: the original EchoForge entry point, with the GPU -> CPU -> placeholder fallback chain."""

from __future__ import annotations

import logging

from producer.settings import Settings
from worker.models.base import SpeechModel
from worker.models.csm_model import CSMModel
from worker.models.device import select_device
from worker.models.errors import CSMModelError, CSMModelLoadError
from worker.models.placeholder import PlaceholderCSMModel

__all__ = ["create_csm_model"]

log = logging.getLogger(__name__)


def create_csm_model(
    model_path: str | None = None,
    device: str | None = None,
    use_placeholder: bool = False,
    *,
    settings: Settings | None = None,
) -> SpeechModel:
    """A CSMModel, or a PlaceholderCSMModel when asked for or when CSM cannot be loaded and that is allowed.

    `model_path=None` means ECHOFORGE_MODEL_PATH, else the hub id ECHOFORGE_MODEL_ID at ECHOFORGE_MODEL_REVISION.
    A load failure on the GPU (out of memory, say) is retried on the CPU before giving up. With
    ECHOFORGE_ALLOW_PLACEHOLDER=false the last error propagates instead of a placeholder being returned.
    """
    settings = settings or Settings()
    model = _create(model_path, device, use_placeholder, settings)
    model.batch_size = settings.batch_size
    if isinstance(model, CSMModel) and model.engine is not None:
        model.engine.check_every = settings.end_check_frames
        if settings.torch_compile:
            model.engine.compile_steps()
    return model


def _create(model_path: str | None, device: str | None, use_placeholder: bool, settings: Settings) -> SpeechModel:
    if use_placeholder or settings.use_placeholder:
        return PlaceholderCSMModel(rtf=settings.placeholder_rtf)
    source = model_path or settings.model_path
    first, device_reason = select_device(device or settings.device)
    reasons = [device_reason] if device_reason else []
    for candidate in dict.fromkeys([first, "cpu"]):
        try:
            model = CSMModel(source, candidate, model_id=settings.model_id, revision=settings.model_revision,
                             model_format=settings.model_format)
        except CSMModelLoadError as e:
            reasons.append(f"{candidate}: {e}")
            log.warning("CSM did not load on %s: %s", candidate, e)
            error: CSMModelError = e
            continue
        except CSMModelError as e:  # not found: no other device will find it either
            reasons.append(str(e))
            error = e
            break
        model.fallback_reason = "; ".join(reasons) or None
        return model
    if not settings.allow_placeholder:
        raise error
    log.warning("serving with the placeholder tone model: %s", "; ".join(reasons))
    return PlaceholderCSMModel(rtf=settings.placeholder_rtf, fallback_reason="; ".join(reasons))
