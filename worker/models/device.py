"""Which device a model runs on: CUDA only with at least 2 GB free, else the CPU. The reason is logged."""

from __future__ import annotations

import logging

__all__ = ["MIN_FREE_GPU_BYTES", "select_device"]

log = logging.getLogger(__name__)

MIN_FREE_GPU_BYTES = 2 * 1024**3


def select_device(requested: str | None = None) -> tuple[str, str | None]:
    """(device, reason it is not the one asked for or None). `requested`: None/"auto", "cpu", "cuda", "cuda:N".

    Imports torch here, not at module level: the Celery parent must never initialise CUDA.
    """
    requested = (requested or "auto").strip().lower()
    if requested == "cpu":
        return "cpu", None
    if requested != "auto" and not requested.startswith("cuda"):
        raise ValueError(f"unknown device {requested!r}: use auto, cpu, cuda or cuda:N")
    import torch

    if not torch.cuda.is_available():
        return _cpu(requested, "CUDA is not available")
    index = int(requested.partition(":")[2] or 0)
    if index >= torch.cuda.device_count():
        return _cpu(requested, f"there is no cuda:{index} ({torch.cuda.device_count()} GPUs)")
    try:
        free, total = torch.cuda.mem_get_info(index)  # creates the CUDA context: fails on a full GPU or a bad driver
    except RuntimeError as e:
        first = (str(e).strip().splitlines() or [""])[0][:200]
        return _cpu(requested, f"CUDA failed: {type(e).__name__}: {first}")
    if free < MIN_FREE_GPU_BYTES:
        return _cpu(requested, f"cuda:{index} has {free / 1024**3:.1f} GB free of {total / 1024**3:.1f} GB (need 2)")
    log.info("using cuda:%d (%s, %.1f GB free)", index, torch.cuda.get_device_name(index), free / 1024**3)
    return f"cuda:{index}", None


def _cpu(requested: str, why: str) -> tuple[str, str | None]:
    log.info("using the CPU (asked for %s): %s", requested, why)
    return "cpu", why
