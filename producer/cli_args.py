"""The command line grammar of `echoforge`."""

from __future__ import annotations

import argparse

from producer.api_keys import SCOPES
from producer.audio_formats import FORMATS
from producer.request import DEFAULT_PRIORITY, DEFAULT_SPEAKER_ID, DEFAULT_TEMPERATURE, DEFAULT_TOP_K, MAX_TOP_K
from producer.states import JobState

__all__ = ["build_parser"]


def _add_submit(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("submit", help="enqueue a narration job and print its id")
    p.add_argument("text", nargs="?", help="the text to narrate (or use --file)")
    p.add_argument("--file", help="read the text from a UTF-8 file (- for stdin); an .epub is a book")
    p.add_argument("--book", action="store_true",
                   help="--file is a book (Markdown or text): one job per chapter, assembled into an M4B")
    p.add_argument("--speaker", type=int, help=f"speaker id (default {DEFAULT_SPEAKER_ID})")
    p.add_argument("--temperature", type=float,
                   help=f"sampling temperature, > 0 and <= 2 (default {DEFAULT_TEMPERATURE})")
    p.add_argument("--top-k", dest="top_k", type=int, help=f"top-k sampling, 1..{MAX_TOP_K} (default {DEFAULT_TOP_K})")
    p.add_argument("--format", choices=list(FORMATS), help="output format (default wav)")
    p.add_argument("--priority", type=int, help=f"0 (lowest) .. 9 (most urgent), default {DEFAULT_PRIORITY}")
    p.add_argument("--idempotency-key", dest="idempotency_key", help="the same key returns the same job")
    p.add_argument("--queue-ttl", dest="queue_ttl", type=int, help="seconds the job may wait before it expires")
    p.add_argument("--voice-prompt", dest="voice_prompt", help="a 0.5-20 s recording of the voice to narrate in")
    p.add_argument("--voice-text", dest="voice_text", help="the transcript of --voice-prompt")
    p.add_argument("--lexicon", help="a pronunciation lexicon: .json (word -> respelling) or .tsv (word<TAB>"
                   "respelling a line)")
    p.add_argument("--wait", action="store_true", help="wait for the job to end, with a progress bar")
    p.add_argument("--json", action="store_true", help="print the job record as JSON")


def _add_serve_and_keys(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run the HTTP API (uvicorn)")
    p.add_argument("--host", help="address to listen on (default ECHOFORGE_API_HOST, 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default ECHOFORGE_API_PORT, 8000)")
    p.add_argument("--workers", type=int, default=1, help="API processes (default 1)")
    keys = sub.add_parser("keys", help="API keys of the HTTP API: create, list, revoke; tenants' webhook secrets")
    actions = keys.add_subparsers(dest="keys_command", required=True)
    p = actions.add_parser("create", help="a new key for a tenant; its secret is printed once")
    p.add_argument("--tenant", required=True)
    p.add_argument("--scope", action="append", choices=list(SCOPES),
                   help="repeat for several (default: every scope but admin)")
    p.add_argument("--json", action="store_true")
    p = actions.add_parser("list", help="every key (never a secret)")
    p.add_argument("--tenant")
    p.add_argument("--json", action="store_true")
    p = actions.add_parser("revoke", help="refuse a key from now on")
    p.add_argument("key_id")
    p = actions.add_parser("webhook-secret", help="show (or --rotate) a tenant's webhook signing secret")
    p.add_argument("--tenant", required=True)
    p.add_argument("--rotate", action="store_true")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="echoforge", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_submit(sub)
    for name, help_text in (("status", "show a job or a book"), ("cancel", "cancel a queued or running job or book"),
                            ("retry", "queue a failed or expired job (or a book's failed parts) again; it resumes "
                                      "from its stored chunks")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("job_id")
        p.add_argument("--json", action="store_true")
    p = sub.add_parser("rerender", help="make some chunks of a succeeded job again (maybe with corrected text); "
                                        "its narration, and its book's M4B, are replaced by the new version")
    p.add_argument("job_id")
    p.add_argument("--chunk", dest="chunks", type=int, action="append", required=True,
                   help="a chunk's index (see the manifest or the captions); repeat for several")
    p.add_argument("--text", help="the corrected text of that one chunk (default: its text, on a new seed)")
    p.add_argument("--wait", action="store_true", help="wait for the new version, with a progress bar")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("wait", help="wait for a job (or book) with progress; non-zero exit unless it succeeded")
    p.add_argument("job_id")
    p.add_argument("--timeout", type=float, help="give up after this many seconds (exit 1)")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("download", help="save a succeeded job's narration (a book's M4B)")
    p.add_argument("job_id")
    p.add_argument("-o", "--output", required=True, help="where to write the audio file")
    p = sub.add_parser("list", help="recent jobs, newest first")
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--state", choices=[s.value for s in JobState])
    p.add_argument("--dead-letter", dest="dead_letter", action="store_true",
                   help="only jobs failed with redelivery_limit (they kept losing their worker)")
    p.add_argument("--json", action="store_true")
    _add_serve_and_keys(sub)
    p = sub.add_parser("up", help="run the whole stack locally: Redis, a worker, Flower, and a demo job")
    p.add_argument("--no-demo", dest="demo", action="store_false", help="start the stack without a demo job")
    p.add_argument("--demo", dest="demo", action="store_true", default=True, help="submit a demo job (default)")
    p.add_argument("--exit-after-job", action="store_true", help="stop everything once the demo job ends")
    p.add_argument("--data-dir", default="data", help="where Redis, outputs and logs go (default ./data)")
    p.add_argument("--flower-port", type=int, default=5555)
    p.add_argument("--api-port", type=int, default=8000, help="the HTTP API's port (default 8000; a free one if taken)")
    return parser
