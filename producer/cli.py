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

from producer.errors import EchoForgeError, ErrorCode, InvalidRequestError
from producer.job import Job
from producer.lexicon import read_lexicon
from producer.progress import wait_with_progress
from producer.request import NarrationRequest
from producer.settings import Settings
from producer.states import JobState

if TYPE_CHECKING:
    pass

__all__ = ["main"]

EXIT_OK, EXIT_JOB_UNSUCCESSFUL, EXIT_BAD_INPUT, EXIT_ERROR, EXIT_UNREACHABLE = 0, 1, 2, 3, 4
# Errors that refuse a request before anything is enqueued or changed (exit 2); every other error exits 3.
_REFUSED = {ErrorCode.INVALID_REQUEST, ErrorCode.CONFLICT}


def _request_fields(args: argparse.Namespace) -> dict[str, Any]:
    if (args.text is None) == (args.file is None):
        raise InvalidRequestError("give the text to narrate, or --file PATH (- for stdin), not both")
    text = args.text if args.text is not None else _read_text(args.file)
    fields = {"text": text, "speaker_id": args.speaker, "temperature": args.temperature, "top_k": args.top_k,
              "output_format": args.format, "priority": args.priority,
              "idempotency_key": args.idempotency_key, "queue_ttl_s": args.queue_ttl, "voice_text": args.voice_text,
              "lexicon": read_lexicon(args.lexicon) if args.lexicon else None}
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


def _finish(job: Job, as_json: bool) -> int:
    _print_job(job, as_json)
    return EXIT_OK if job.state is JobState.SUCCEEDED else EXIT_JOB_UNSUCCESSFUL


def _run(args: argparse.Namespace) -> int:
    if args.command == "up":
        from producer.stack import run_stack

        return run_stack(args)
    if args.command in ("serve", "keys"):
        from producer import keys_cli, stack_state

        settings = Settings() if args.command == "serve" else stack_state.cli_settings()
        return keys_cli.run_serve(args, settings) if args.command == "serve" else keys_cli.run_keys(args, settings)
    from producer.books import cli as book_cli

    request = None
    book = args.command == "submit" and book_cli.is_book_submit(args)
    if args.command == "submit" and not book:  # parsed once, here: bad input is refused before connecting anywhere
        request = NarrationRequest.parse(_request_fields(args), voice_upload_pending=args.voice_prompt is not None)
    from producer import stack_state
    from producer.books.client import BookClient
    from producer.client import NarrationClient

    client = NarrationClient(stack_state.cli_settings())
    books = BookClient(client)
    if book:
        return book_cli.submit_book(args, books)
    if args.command in ("status", "wait", "cancel", "retry", "download") and books.books.exists(args.job_id):
        return book_cli.run_book_command(args, books)
    if request is not None:
        job = client.submit(request, voice_prompt=args.voice_prompt)
        if not args.wait:
            _print_job(job, args.json)
            return EXIT_OK
        return _finish(wait_with_progress(client, job.id, None), args.json)
    if args.command == "status":
        _print_job(client.get(args.job_id), args.json)
        return EXIT_OK
    if args.command == "wait":
        job = wait_with_progress(client, args.job_id, args.timeout)
        return _finish(job, args.json) if job.state.is_terminal else EXIT_JOB_UNSUCCESSFUL
    if args.command == "rerender":
        job = client.rerender(args.job_id, args.chunks, args.text)
        if not args.wait:
            _print_job(job, args.json)
            return EXIT_OK
        return _finish(wait_with_progress(client, job.id, None), args.json)
    if args.command in ("cancel", "retry"):
        _print_job(client.cancel(args.job_id) if args.command == "cancel" else client.retry(args.job_id), args.json)
        return EXIT_OK
    if args.command == "download":
        print(client.download(args.job_id, args.output))
        return EXIT_OK
    if args.dead_letter:
        jobs = [client.get(job_id) for job_id in client.jobs.dead_lettered()[: args.limit]]
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
    except (redis.ConnectionError, redis.TimeoutError) as e:
        print(f"echoforge: cannot reach Redis ({type(e).__name__}); check ECHOFORGE_REDIS_URL", file=sys.stderr)
        return EXIT_UNREACHABLE
    except ValidationError as e:  # the ECHOFORGE_* environment
        print(f"echoforge: bad configuration: {e}", file=sys.stderr)
        return EXIT_ERROR
    except EchoForgeError as e:
        print(f"echoforge: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT if e.code in _REFUSED else EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
