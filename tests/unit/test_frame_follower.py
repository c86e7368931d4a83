"""How the API follows a job's frame stream (producer/api/frame_stream.py): a resumed run's pieces continue from the
sample the listener reached, a dead run's late pieces are ignored, and only the followed run's end marker ends it."""

from __future__ import annotations

import numpy as np

from producer.api.frame_stream import _Follower


def _piece(run: int, seq: int, start: int, length: int) -> dict[bytes, bytes]:
    samples = np.arange(start, start + length, dtype="<f4")
    return {b"run": str(run).encode(), b"seq": str(seq).encode(), b"rate": b"24000", b"pcm": samples.tobytes()}


def _end(run: int, seq: int) -> dict[bytes, bytes]:
    return {b"run": str(run).encode(), b"seq": str(seq).encode(), b"end": b"1"}


def test_a_resumed_run_continues_where_the_listener_stopped() -> None:
    follower, heard = _Follower(), []
    for fields in [_piece(1, 0, 0, 4), _piece(1, 1, 4, 4),  # the first run dies after 8 samples
                   _piece(2, 0, 0, 4), _piece(1, 2, 8, 4), _piece(2, 1, 4, 6), _piece(2, 2, 10, 4)]:
        audio, ended = follower.take(fields)
        assert not ended
        if audio is not None:
            heard.append(audio)
    assert np.concatenate(heard).tolist() == list(range(14))
    assert follower.take(_end(1, 3)) == (None, False)  # the dead run's end is not this run's
    assert follower.take(_end(2, 3)) == (None, True)


def test_pieces_of_a_run_that_started_before_the_reader_joined_are_not_followed() -> None:
    follower = _Follower()
    assert follower.take(_piece(3, 5, 0, 4)) == (None, False)
    audio, _ = follower.take(_piece(4, 0, 0, 4))
    assert audio is not None and audio.tolist() == [0, 1, 2, 3] and follower.sent == 4
