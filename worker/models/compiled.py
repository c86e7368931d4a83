"""An engine step compiled by `torch.compile` (inductor, one graph): operators fused into few kernels, so a frame
launches fewer of them. Compiling is an optimization: if it fails, or a compiled call fails, the step is logged,
recorded for the job's model info and run eagerly from then on. Only compile errors are caught: an error of the step
itself, or a time limit's exception, goes on to the job as it would eagerly."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["CompiledStep"]

log = logging.getLogger(__name__)

# Raised while tracing or compiling, before anything ran. FailOnRecompileLimitHit (a step's shapes changed more than
# torch._dynamo.config.recompile_limit times: fullgraph turns the fallback into an error) is not a TorchDynamoException.
COMPILE_ERRORS = (torch._dynamo.exc.TorchDynamoException, torch._dynamo.exc.FailOnRecompileLimitHit)


class CompiledStep:
    """`fn` through torch.compile(fullgraph=True): a graph break (a host sync such as `.tolist()` included) is a
    compile error, so a compiled step never waits for the device. Shapes that change between calls (the batch, the
    backbone's key width) are compiled once more with those sizes dynamic, then reused (sizes that never change stay
    fixed: with the weights' shapes known, inductor keeps reshapes as views where a dynamic compile copies)."""

    def __init__(self, fn: Callable[..., Any], name: str, failures: list[str]) -> None:
        self.fn, self.name, self.failures = fn, name, failures
        self.compiled: Callable[..., Any] | None = None
        self.calls = 0  # calls served by the compiled code
        try:
            self.compiled = torch.compile(fn, fullgraph=True)
        except Exception as e:  # e.g. inductor's cache directory cannot be made
            self._failed(e)

    def __call__(self, *args: Any) -> Any:
        if self.compiled is not None:
            try:
                out = self.compiled(*args)
                self.calls += 1
                return out
            except COMPILE_ERRORS as e:  # raised before the step ran: safe to run it eagerly
                self._failed(e)
        return self.fn(*args)

    def _failed(self, error: Exception) -> None:
        cause = getattr(error, "inner_exception", None) or error  # inductor wraps what failed in its own error
        failure = f"{self.name}: {type(cause).__name__}: {(str(cause).strip().splitlines() or [''])[0][:200]}"
        log.warning("torch.compile failed for the %s; running it eagerly", failure)
        self.failures.append(failure)
        self.compiled = None
