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

__all__ = ["DEFAULT_FRAMES_PER_CHUNK", "PieceDecoder", "stream_frames"]

DEFAULT_FRAMES_PER_CHUNK = 2  # 160 ms of audio per piece
OnFrame = Callable[[int, Any], None]  # (row, codes [codebooks]) as the engine makes each frame


class PieceDecoder:
    """Frames' codes in, mono float32 pieces of `frames_per_piece` frames out, through a streaming codec (run inside
    its `mimi.streaming` context, which carries the decoder's state from one piece to the next)."""

    def __init__(self, codec: MoshiCodec, frames_per_piece: int) -> None:
        self.codec, self.frames_per_piece = codec, frames_per_piece
        self._pending: list[Any] = []

    def add(self, codes: Any) -> np.ndarray | None:
        """The next piece once this frame completes one, else None."""
        self._pending.append(codes)
        return self.flush() if len(self._pending) >= self.frames_per_piece else None

    def flush(self) -> np.ndarray | None:
        """The frames not yet decoded as a (shorter) piece; None when there are none."""
        import torch

        if not self._pending:
            return None
        piece = self.codec.decode(torch.stack(self._pending)).numpy().astype(np.float32)
        self._pending.clear()
        return piece


class _Stopped(Exception):
    """The reader went away: generation stops at the next frame."""


def stream_frames(generate: Callable[[OnFrame], Any], codec: MoshiCodec,
                  frames_per_chunk: int = DEFAULT_FRAMES_PER_CHUNK) -> Generator[np.ndarray, None, None]:
    """Mono float32 24 kHz pieces of one row's audio, each `frames_per_chunk` frames (the last may be shorter).

    `generate(on_frame)` runs the engine for one row; it runs on a thread of its own, which also decodes, so the
    reader gets each piece as soon as its frames exist.
    """
    pieces: queue.Queue[np.ndarray | BaseException | None] = queue.Queue()
    stop = threading.Event()

    def run() -> None:
        decoder = PieceDecoder(codec, frames_per_chunk)

        def on_frame(_row: int, codes: Any) -> None:
            if stop.is_set():
                raise _Stopped
            if (piece := decoder.add(codes)) is not None:
                pieces.put(piece)

        try:
            with codec.mimi.streaming(batch_size=1):
                generate(on_frame)
                if (piece := decoder.flush()) is not None:
                    pieces.put(piece)
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
