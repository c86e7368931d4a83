"""A frame-streaming job's first chunk, published while it is generated: the engine hands each frame's codes to
`sink` (generation thread: a copy and a queue put, nothing more); a thread of this publisher decodes them a few frames
at a time through the model's streaming Mimi and appends each piece to the job's Redis stream, then an end marker.

Entries (producer/keys.py: frame_stream_key): {run, chunk, attempt, seq, rate, pcm: float32 mono samples}, and last
{run, chunk, attempt, seq, end: 1, samples}. `run` is the job's start count, so a reader tells a resumed run's pieces
from the dead one's. Only the first generation of chunk 0 is published (a QA retry is not; a first chunk guessed
from the text's opening is held until the plan keeps it, and dropped if not), at most one job at a time
per streaming codec (a job that finds it busy publishes nothing), and a failure to publish only stops publishing:
the API then sends the stored chunk from where the pieces stopped. The end marker is always in the stream before the
chunk is stored (close() waits for it), which is what the API's fallback relies on.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any

import numpy as np

from producer import keys
from worker.models import SAMPLE_RATE, SpeechModel
from worker.models.frame_stream import DEFAULT_FRAMES_PER_CHUNK, PieceDecoder

__all__ = ["FramePublisher"]

log = logging.getLogger(__name__)

_END = None
_CODEC_LOCKS: dict[int, threading.Lock] = {}  # one streaming decode at a time per codec (its state is the module's)
_LOCKS_GUARD = threading.Lock()


def _codec_lock(codec: Any) -> threading.Lock:
    with _LOCKS_GUARD:
        return _CODEC_LOCKS.setdefault(id(codec), threading.Lock())


class _Discarded(Exception):
    """The generation was of a guessed first chunk that the plan did not keep: nothing of it is published."""


class FramePublisher:
    """Publishes one job's chunk 0 frame by frame; `sink` is the engine's FrameSink for that text."""

    def __init__(self, redis: Any, job_id: str, run: int, codec: Any,
                 frames_per_piece: int = DEFAULT_FRAMES_PER_CHUNK) -> None:
        self.redis, self.job_id, self.run, self.codec = redis, job_id, run, codec
        self.frames_per_piece = frames_per_piece
        self.key = keys.frame_stream_key(job_id)
        self.claimed = False  # a generation of chunk 0 streams through it (the first one only)
        self._frames: queue.Queue[Any] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._stopped = False  # publishing failed, or the codec was busy: frames are dropped
        self._seq = 0
        self._ended = False  # the decoding thread has taken the end from the queue
        self._settled = threading.Event()  # pieces may be published (cleared by hold until settle)
        self._settled.set()
        self._keep = True

    @classmethod
    def for_job(cls, redis: Any, job_id: str, run: int, model: SpeechModel, stream_frames: bool
                ) -> FramePublisher | None:
        """A publisher when the job asks for frame streaming and the model can stream frames, else None."""
        codec = model.streaming_codec() if stream_frames else None
        return None if codec is None else cls(redis, job_id, run, codec)

    def claim(self) -> bool:
        """True once: the caller's generation of chunk 0 is the one to publish."""
        claimed, self.claimed = self.claimed, True
        return not claimed

    def hold(self) -> None:
        """Publish nothing until settle(): the chunk being generated is a guess the plan may not keep."""
        self._settled.clear()

    def settle(self, keep: bool) -> None:
        """The plan is known: publish the held generation's pieces, or none of them."""
        self._keep = keep
        self._settled.set()

    def sink(self, _text: int, codes: Any) -> None:
        """The engine's FrameSink: the frame is copied to the CPU (the engine reuses its buffers) and queued."""
        if self._stopped:
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._publish_all, daemon=True,
                                             name=f"echoforge-frames-{self.job_id[:8]}")
            self._thread.start()
        self._frames.put(codes.to("cpu", copy=True))

    def close(self) -> None:
        """The chunk's frames are all in: publish the rest and the end marker, and wait for that."""
        self._stopped = True  # a frame after this (a row still running at a failure) is dropped
        if self._thread is not None:
            self._frames.put(_END)
            self._thread.join()
            self._thread = None

    def _publish_all(self) -> None:
        lock = _codec_lock(self.codec)
        if not lock.acquire(blocking=False):
            log.info("job %s: another job is streaming frames on this model; chunk 0 is not frame-streamed",
                     self.job_id)
            self._stop()
            return
        try:
            self._decode_and_publish()
        except _Discarded:
            self._stop()
        except Exception as e:
            log.warning("job %s: frame streaming stopped (%s: %s); the stored chunk is streamed instead",
                        self.job_id, type(e).__name__, str(e)[:200])
            self._stop()
        finally:
            lock.release()

    def _decode_and_publish(self) -> None:
        decoder, samples = PieceDecoder(self.codec, self.frames_per_piece), 0
        with self.codec.mimi.streaming(batch_size=1):
            while (frame := self._frames.get()) is not _END:
                if (piece := decoder.add(frame)) is not None:
                    samples += self._publish_piece(piece)
            self._ended = True
            if (piece := decoder.flush()) is not None:
                samples += self._publish_piece(piece)
        self._add({"end": 1, "samples": samples})

    def _publish_piece(self, audio: np.ndarray) -> int:
        self._add({"rate": SAMPLE_RATE, "pcm": audio.astype("<f4").tobytes()})
        return len(audio)

    def _add(self, fields: dict[str, Any]) -> None:
        self._settled.wait()
        if not self._keep:
            raise _Discarded
        pipe = self.redis.pipeline(transaction=False)
        pipe.xadd(self.key, {"run": self.run, "chunk": 0, "attempt": 1, "seq": self._seq, **fields},
                  maxlen=keys.FRAME_STREAM_MAXLEN, approximate=True)
        pipe.expire(self.key, keys.FRAME_STREAM_TTL_S)
        pipe.execute()
        self._seq += 1

    def _stop(self) -> None:
        """Publish nothing more, and take frames until the end, so close() never waits on a queue nobody reads."""
        self._stopped = True
        while not self._ended:
            self._ended = self._frames.get() is _END
