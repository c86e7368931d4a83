"""Finding and loading a CSM checkpoint (local directory or Hugging Face hub id), with errors that say what to do."""

from __future__ import annotations

import logging
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from producer.errors import error_chain
from worker.models.errors import CSMModelError, CSMModelLoadError, CSMModelNotFoundError

__all__ = ["classify_error", "hub_mimi_weights", "hub_reachable", "load_checkpoint", "resolve_checkpoint"]

log = logging.getLogger(__name__)

_NOT_FOUND_TYPES = ("RepositoryNotFoundError", "EntryNotFoundError", "HFValidationError")


def hub_reachable(timeout: float = 3.0) -> bool:
    """A quick TCP probe of the Hub, so an unreachable Hub fails in seconds rather than minutes of retries."""
    from huggingface_hub import constants

    parts = urlsplit(constants.ENDPOINT)
    try:
        with socket.create_connection((parts.hostname or "", parts.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


# What a transformers CSM checkpoint needs; the hub repo also holds the original ckpt.pt, fetched only when asked.
_CHECKPOINT_FILES = ["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model"]
# Sesame's original format: ckpt.pt (sesame/csm-1b), or a fine-tune's config.json + model.safetensors; the tokenizer.
_ORIGINAL_FILES = ["ckpt.pt", "config.json", "tokenizer*", "special_tokens_map.json", "mimi_config.json",
                   "tokenizer-e351c8d8-checkpoint125.safetensors"]


def resolve_checkpoint(source: str, revision: str | None, model_format: str = "auto") -> tuple[Path, str | None]:
    """(local directory, hub commit or None): a local path as is, a hub id through the HF cache (HF_HOME); the hub's
    original-format files when `model_format` is "original", else the transformers ones.

    Downloads what is missing unless HF_HUB_OFFLINE is set or the Hub is unreachable; HF_TOKEN is read by
    huggingface_hub itself and never passes through here.
    """
    local = Path(source).expanduser()
    if local.exists() or source.startswith(("/", ".", "~")) or source.count("/") > 1:
        if not local.is_dir():
            raise CSMModelNotFoundError(f"no model directory at {local}: set ECHOFORGE_MODEL_PATH to a CSM "
                                        "checkpoint directory, or unset it to use ECHOFORGE_MODEL_ID from the Hub")
        return local, None
    from huggingface_hub import constants, snapshot_download

    offline = bool(constants.HF_HUB_OFFLINE)
    if not offline and not hub_reachable():
        log.warning("the Hugging Face Hub is unreachable; looking for %s in the local cache only", source)
        offline = True
    patterns = _ORIGINAL_FILES if model_format == "original" else _CHECKPOINT_FILES
    try:
        path = Path(snapshot_download(source, revision=revision, allow_patterns=patterns, local_files_only=offline))
        if model_format == "original" and '"backbone_flavor"' in _text(path / "config.json"):  # a fine-tune's layout
            snapshot_download(source, revision=revision, allow_patterns=["model.safetensors"], local_files_only=offline)
    except Exception as e:
        raise classify_error(e, source) from e
    return path, path.name


def _text(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def hub_mimi_weights(name: str) -> Path:
    """Mimi's weights for moshi from moshi's own repository (as the reference does), through the HF cache."""
    from huggingface_hub import constants, hf_hub_download
    from moshi.models import loaders

    offline = bool(constants.HF_HUB_OFFLINE) or not hub_reachable()
    try:
        return Path(hf_hub_download(loaders.DEFAULT_REPO, name, local_files_only=offline))
    except Exception as e:
        raise classify_error(e, loaders.DEFAULT_REPO) from e


def load_checkpoint(directory: Path, dtype: Any) -> tuple[Any, Any]:
    """(processor, model) on the CPU from a checkpoint directory; never touches CUDA."""
    from transformers import AutoProcessor, CsmForConditionalGeneration

    try:
        processor = AutoProcessor.from_pretrained(directory)
        model = CsmForConditionalGeneration.from_pretrained(directory, dtype=dtype)
    except Exception as e:
        raise classify_error(e, str(directory)) from e
    return processor, model.eval()


def classify_error(error: BaseException, source: str) -> CSMModelError:
    """NotFound (nothing there, no access) vs Load (something there but unusable), by the exception chain."""
    chain = list(error_chain(error))
    names = {type(e).__name__ for e in chain}
    text = " ".join(str(e) for e in chain)
    if "GatedRepoError" in names or "gated repo" in text.lower():
        return CSMModelNotFoundError(f"{source} is a gated repository: accept its terms on the Hugging Face Hub and "
                                     "set HF_TOKEN to a token with access")
    fix = "set ECHOFORGE_MODEL_ID / ECHOFORGE_MODEL_REVISION and HF_TOKEN, or ECHOFORGE_MODEL_PATH to a checkpoint"
    if "LocalEntryNotFoundError" in names:
        from huggingface_hub import constants

        return CSMModelNotFoundError(f"{source} is not in the local Hugging Face cache ({constants.HF_HUB_CACHE}) "
                                     f"and the Hub is offline or unreachable: {fix}")
    if "RevisionNotFoundError" in names:
        return CSMModelNotFoundError(f"{source} has no such revision on the Hub: {fix}")
    if names & set(_NOT_FOUND_TYPES) or "is not a valid model identifier" in text:
        return CSMModelNotFoundError(f"{source} was not found on the Hub (or is private to you): {fix}")
    if any("OutOfMemoryError" in n for n in names) or "out of memory" in text.lower():
        return CSMModelLoadError(f"out of memory loading {source}")
    return CSMModelLoadError(f"cannot load {source} ({type(error).__name__}): {str(error)[:300]}")
