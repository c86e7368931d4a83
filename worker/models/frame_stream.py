"""Frame-level streaming: a text's audio every few frames (80 ms each) while the engine is still generating, decoded
by moshi's streaming Mimi, which carries its convolution and attention state from one call to the next; the pieces
joined equal the one-shot decode of the same codes (within float tolerance).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from worker.models.moshi_codec import MoshiCodec

__all__ = ["DEFAULT_FRAMES_PER_CHUNK", "stream_frames"]

DEFAULT_FRAMES_PER_CHUNK = 2  # 160 ms of audio per piece
OnFrame = Callable[[int, Any], None]  # (row, codes [codebooks]) as the engine makes each frame


class _Stopped(Exception):
    """The reader went away: generation stops at the next frame."""


def stream_frames(generate: Callable[[OnFrame], Any], codec: MoshiCodec,
                  frames_per_chunk: int = DEFAULT_FRAMES_PER_CHUNK) -> Generator[np.ndarray, None, None]:
    """Mono float32 24 kHz pieces of one row's audio, each `frames_per_chunk` frames (the last may be shorter).

    `generate(on_frame)` runs the engine for one row; it runs on a thread of its own, which also decodes, so the
    reader gets each piece as soon as its frames exist.
    """
    import torch

    pieces: queue.Queue[np.ndarray | BaseException | None] = queue.Queue()
    stop = threading.Event()

    def run() -> None:
        pending: list[torch.Tensor] = []

        def flush() -> None:
            if pending:
                pieces.put(codec.decode(torch.stack(pending)).numpy().astype(np.float32))
                pending.clear()

        def on_frame(_row: int, codes: torch.Tensor) -> None:
            if stop.is_set():
                raise _Stopped
            pending.append(codes)
            if len(pending) >= frames_per_chunk:
                flush()

        try:
            with codec.mimi.streaming(batch_size=1):
                generate(on_frame)
                flush()
            pieces.put(None)
        except BaseException as e:  # handed to the reader, raised there
            pieces.put(e)

    thread = threading.Thread(target=run, name="frame-stream", daemon=True)
    thread.start()
    try:
        while (piece := pieces.get()) is not None:
            if isinstance(piece, _Stopped):
                break
            if isinstance(piece, BaseException):
                raise piece
            yield piece
    finally:
        stop.set()
        thread.join()
