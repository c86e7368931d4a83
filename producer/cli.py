"""`echoforge`: submit narration jobs, follow them, fetch the result, run the embedded stack."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis
from pydantic import ValidationError
from tqdm import tqdm

from producer.errors import EchoForgeError, InvalidRequestError, JobNotFoundError
from producer.jobs import Job, JobState, NarrationRequest

if TYPE_CHECKING:
    from producer.client import NarrationClient

__all__ = ["main"]

EXIT_OK, EXIT_JOB_UNSUCCESSFUL, EXIT_BAD_INPUT, EXIT_ERROR, EXIT_UNREACHABLE = 0, 1, 2, 3, 4


def _request_fields(args: argparse.Namespace) -> dict[str, Any]:
    if (args.text is None) == (args.file is None):
        raise InvalidRequestError("give the text to narrate, or --file PATH (- for stdin), not both")
    text = args.text if args.text is not None else _read_text(args.file)
    fields = {"text": text, "speaker_id": args.speaker, "temperature": args.temperature, "top_k": args.top_k,
              "output_format": args.format, "priority": args.priority,
              "idempotency_key": args.idempotency_key, "queue_ttl_s": args.queue_ttl, "voice_text": args.voice_text}
    return {k: v for k, v in fields.items() if v is not None}


def _read_text(path: str) -> str:
    try:
        raw = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except OSError as e:
        raise InvalidRequestError(f"cannot read {path}: {e.strerror}") from e
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InvalidRequestError(f"{path} is not valid UTF-8 (byte {e.start})") from e


def _print_job(job: Job, as_json: bool) -> None:
    if as_json:
        print(json.dumps(job.to_public(), indent=2))
        return
    line = f"{job.id}  {job.state.value}"
    if job.progress.get("chunks_total"):
        line += f"  {job.progress.get('chunks_done', 0)}/{job.progress['chunks_total']} chunks"
    if job.model:
        line += f"  model={job.model.get('kind')} device={job.model.get('device')}"
    if job.result:
        line += f"  {job.result['duration_s']:.1f}s  {job.result['url']}"
    if job.error:
        line += f"  error={job.error['code']}: {job.error['message']}"
    print(line)


def _wait_with_progress(client: NarrationClient, job_id: str, timeout: float | None,
                        warn_no_worker: bool = True) -> Job:
    from producer.queue_watch import NoWorkerCheck

    bar = tqdm(total=1, unit="chunk", desc=job_id[:8], file=sys.stderr, disable=None, leave=False)
    no_worker = NoWorkerCheck(client) if warn_no_worker else None

    def show(job: Job) -> None:
        bar.total = max(1, job.progress.get("chunks_total", 1))
        bar.n = job.progress.get("chunks_done", 0)
        bar.set_postfix_str(f"{job.state.value} {job.progress.get('audio_s', 0):.1f}s audio", refresh=True)
        if no_worker is not None and (warning := no_worker.check(job)) is not None:
            tqdm.write(warning, file=sys.stderr)

    try:
        return client.wait(job_id, timeout=timeout, on_change=show)
    finally:
        bar.close()


def _finish(job: Job, as_json: bool) -> int:
    _print_job(job, as_json)
    return EXIT_OK if job.state is JobState.SUCCEEDED else EXIT_JOB_UNSUCCESSFUL


def _run(args: argparse.Namespace) -> int:
    if args.command == "up":
        from producer.stack import run_stack

        return run_stack(args)
    fields = _request_fields(args) if args.command == "submit" else None
    if fields is not None and args.voice_prompt is None:
        NarrationRequest.parse(fields)  # refuse bad input before connecting anywhere
    from producer import stack_state
    from producer.client import NarrationClient

    client = NarrationClient(stack_state.cli_settings())
    if fields is not None:
        job = client.submit(fields, voice_prompt=args.voice_prompt)
        if not args.wait:
            _print_job(job, args.json)
            return EXIT_OK
        return _finish(_wait_with_progress(client, job.id, None), args.json)
    if args.command == "status":
        _print_job(client.get(args.job_id), args.json)
        return EXIT_OK
    if args.command == "wait":
        job = _wait_with_progress(client, args.job_id, args.timeout)
        return _finish(job, args.json) if job.state.is_terminal else EXIT_JOB_UNSUCCESSFUL
    if args.command in ("cancel", "retry"):
        _print_job(client.cancel(args.job_id) if args.command == "cancel" else client.retry(args.job_id), args.json)
        return EXIT_OK
    if args.command == "download":
        print(client.download(args.job_id, args.output))
        return EXIT_OK
    if args.dead_letter:
        jobs = [client.get(job_id) for job_id in client.store.dead_lettered()[: args.limit]]
    else:
        jobs = client.list(limit=args.limit, state=JobState(args.state) if args.state else None)
    if args.json:
        print(json.dumps([j.to_public() for j in jobs], indent=2))
    for job in [] if args.json else jobs:
        _print_job(job, False)
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    from producer.cli_args import build_parser

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return _run(args)
    except InvalidRequestError as e:
        print(f"echoforge: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except JobNotFoundError as e:
        print(f"echoforge: {e}", file=sys.stderr)
        return EXIT_ERROR
    except (redis.ConnectionError, redis.TimeoutError) as e:
        print(f"echoforge: cannot reach Redis ({type(e).__name__}); check ECHOFORGE_REDIS_URL", file=sys.stderr)
        return EXIT_UNREACHABLE
    except ValidationError as e:  # the ECHOFORGE_* environment
        print(f"echoforge: bad configuration: {e}", file=sys.stderr)
        return EXIT_ERROR
    except EchoForgeError as e:
        print(f"echoforge: {e}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
