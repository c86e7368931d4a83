"""Every queue name, task name, Redis key prefix and TTL EchoForge uses, spelled once."""

from __future__ import annotations

# Celery queue (a Redis list of that name, plus one list per priority step) the workers consume.
NARRATION_QUEUE = "echoforge.narration"
# Celery queue the webhook delivery worker consumes (`celery -A producer.webhooks.app worker -Q ...`): never a GPU
# worker's pool.
WEBHOOK_QUEUE = "echoforge.webhooks"
# Celery task name producers send by name; the worker registers it under the same name.
NARRATE_TASK = "echoforge.narrate"
# Hash holding one job record: echoforge:job:<job_id>.
JOB_KEY_PREFIX = "echoforge:job:"
# Sorted set of job ids scored by creation time, for `list`.
JOB_INDEX_KEY = "echoforge:jobs"
# String mapping an idempotency key to the job id it created: echoforge:idem:<key>, or echoforge:idem:<tenant>:<key>
# for a tenant's key (tenants never share keys).
IDEMPOTENCY_KEY_PREFIX = "echoforge:idem:"
# A tenant's own job index (sorted set of job ids by creation time): echoforge:tenant:<tenant>:jobs.
# The set of its queued jobs, for its cap on jobs queued at once: echoforge:tenant:<tenant>:queued.
# Its request token bucket (hash: tokens, at), shared by every API process: echoforge:tenant:<tenant>:bucket.
# The characters it submitted on one UTC day (a counter that expires after two days):
# echoforge:tenant:<tenant>:chars:<YYYY-MM-DD>.
TENANT_PREFIX = "echoforge:tenant:"
# Per-job run lock, value = the holder's token, kept alive by a heartbeat: echoforge:lock:<job_id>.
JOB_LOCK_PREFIX = "echoforge:lock:"
# Set while a worker drains (a warm shutdown: SIGTERM): its jobs finish the rows in flight and are handed back to
# the queue; echoforge:draining:<worker hostname>, with a TTL, cleared when a worker of that name starts.
DRAINING_PREFIX = "echoforge:draining:"
DRAINING_TTL_S = 3600
# Set of the ids of running jobs, kept by the transition script; the reaper looks for ones whose lock expired.
RUNNING_JOBS_KEY = "echoforge:running"
# Marks a stale job as re-enqueued, so several reapers send it once: echoforge:reaped:<job_id>.
REAPED_PREFIX = "echoforge:reaped:"
# Sorted set of job ids recorded but not yet sent to the queue, scored by creation time; a producer that died in
# between leaves its job here, and a reaper sends it.
UNSENT_JOBS_KEY = "echoforge:unsent"
# Sorted set of job ids that hit the redelivery cap (dead-lettered), scored by when.
DEAD_LETTER_KEY = "echoforge:dead-letter"
# Pub/sub channel announcing every change of one job: echoforge:events:<job_id>.
JOB_EVENTS_PREFIX = "echoforge:events:"
# A frame-streaming job's first chunk as it is decoded (a stream of float32 PCM pieces, then an end marker):
# echoforge:frames:<job_id>; capped in length, and it expires FRAME_STREAM_TTL_S after its last piece.
FRAME_STREAM_PREFIX = "echoforge:frames:"
FRAME_STREAM_MAXLEN = 2000  # pieces (160 ms each by default): longer than a chunk's frame cap allows
FRAME_STREAM_TTL_S = 600
# One API key (hash: tenant, scopes, the SHA-256 of its secret, created/revoked times): echoforge:apikey:<key id>;
# and the sorted set of every key id by creation time.
API_KEY_PREFIX = "echoforge:apikey:"
API_KEYS_INDEX = "echoforge:apikeys"
# One voice (hash: tenant, name, transcript, the recording's sha256 and length, created_at): echoforge:voice:<id>;
# a tenant's voice index (sorted set of voice ids by creation time): echoforge:tenant:<tenant>:voices.
VOICE_KEY_PREFIX = "echoforge:voice:"
# Webhooks (producer/webhooks/). The Celery queue and task of deliveries: only the webhook worker consumes it, never
# a GPU worker.
WEBHOOK_QUEUE = "echoforge.webhooks"
WEBHOOK_DELIVER_TASK = "echoforge.webhooks.deliver"
# The outbox: a stream of {job_id, event, at} written by the transition script in the same step as the transition;
# relays (in webhook workers) read it as one consumer group and move each entry to the queue.
WEBHOOK_OUTBOX_KEY = "echoforge:webhooks:outbox"
WEBHOOK_RELAY_GROUP = "relays"
# One webhook message (hash: job, tenant, event, url, the body, attempts made) until it is delivered or given up:
# echoforge:webhooks:message:<webhook id>.
WEBHOOK_MESSAGE_PREFIX = "echoforge:webhooks:message:"
# Sorted set of webhook ids waiting for their next attempt, scored by when it is due.
WEBHOOK_RETRIES_KEY = "echoforge:webhooks:retries"
# A job's delivery attempts (a list of JSON objects, oldest first): echoforge:webhooks:attempts:<job_id>.
WEBHOOK_ATTEMPTS_PREFIX = "echoforge:webhooks:attempts:"
# At most one progress webhook per this many seconds per job (ECHOFORGE_WEBHOOK_PROGRESS_INTERVAL_S).
WEBHOOK_PROGRESS_INTERVAL_S = 10.0
# How long a finished job record (and its idempotency key) stays readable.
FINISHED_JOB_TTL_S = 7 * 24 * 3600
# Priority steps of the Redis transport: each step is its own list (queue, queue\x06\x163, ...).
PRIORITY_STEPS = (0, 3, 6, 9)
# Storage object names below <prefix>/<job_id>/ (the narration is narration.<extension>, producer/audio_formats.py).
NARRATION_OBJECT = "narration"
MANIFEST_OBJECT = "manifest.json"
CHUNK_OBJECT = "chunks/{index:05d}.wav"
CAPTIONS_OBJECTS = {"srt": "captions.srt", "vtt": "captions.vtt"}
# Voice prompts uploaded by clients: <prefix>/voices/<sha256>.wav (content-addressed, never user text).
VOICES_FOLDER = "voices"
# Books (producer/books/). The Celery queue and tasks of a chapter's AAC encoding and of assembly (the service worker
# consumes it, never a GPU worker).
BOOK_QUEUE = "echoforge.books"
BOOK_ASSEMBLE_TASK = "echoforge.books.assemble"
BOOK_PRE_ENCODE_TASK = "echoforge.books.pre_encode"
# One book (hash: tenant, title, author, options, its chapters' titles, the job of each part as `job:<part>`, the
# voice anchor, and once decided its final state, result or error): echoforge:book:<book_id>; the sorted set of
# every book id by creation time; the set of parts whose narration is finished: echoforge:book:<book_id>:finished;
# the assembly's lock: echoforge:book:<book_id>:assembling.
BOOK_KEY_PREFIX = "echoforge:book:"
BOOK_INDEX_KEY = "echoforge:books"
# A book's objects: <prefix>/books/<book_id>/ (its source, cover, M4B, captions and manifest).
BOOKS_FOLDER = "books"


def job_key(job_id: str) -> str:
    return JOB_KEY_PREFIX + job_id


def book_key(book_id: str) -> str:
    return BOOK_KEY_PREFIX + book_id


def book_finished_key(book_id: str) -> str:
    return f"{BOOK_KEY_PREFIX}{book_id}:finished"


def book_assembly_lock_key(book_id: str) -> str:
    return f"{BOOK_KEY_PREFIX}{book_id}:assembling"


def job_lock_key(job_id: str) -> str:
    return JOB_LOCK_PREFIX + job_id


def draining_key(worker: str) -> str:
    return DRAINING_PREFIX + worker


def idempotency_key(key: str, tenant: str | None = None) -> str:
    return IDEMPOTENCY_KEY_PREFIX + (f"{tenant}:{key}" if tenant else key)


def tenant_jobs_key(tenant: str) -> str:
    return f"{TENANT_PREFIX}{tenant}:jobs"


def tenant_queued_key(tenant: str) -> str:
    return f"{TENANT_PREFIX}{tenant}:queued"


def tenant_bucket_key(tenant: str) -> str:
    return f"{TENANT_PREFIX}{tenant}:bucket"


def tenant_daily_chars_key(tenant: str, day: str) -> str:
    """`day` is the UTC date, YYYY-MM-DD."""
    return f"{TENANT_PREFIX}{tenant}:chars:{day}"


def tenant_voices_key(tenant: str) -> str:
    return f"{TENANT_PREFIX}{tenant}:voices"


def voice_key(voice_id: str) -> str:
    return VOICE_KEY_PREFIX + voice_id


def tenant_webhook_secret_key(tenant: str) -> str:
    return f"{TENANT_PREFIX}{tenant}:webhook-secret"


def webhook_message_key(webhook_id: str) -> str:
    return WEBHOOK_MESSAGE_PREFIX + webhook_id


def webhook_attempts_key(job_id: str) -> str:
    return WEBHOOK_ATTEMPTS_PREFIX + job_id


def api_key_key(key_id: str) -> str:
    return API_KEY_PREFIX + key_id


def job_events_channel(job_id: str) -> str:
    return JOB_EVENTS_PREFIX + job_id


def frame_stream_key(job_id: str) -> str:
    return FRAME_STREAM_PREFIX + job_id


def priority_queue_lists(queue: str = NARRATION_QUEUE) -> list[str]:
    """The Redis lists kombu uses for one queue: the plain name for step 0, then `name\\x06\\x16<step>`."""
    return [queue if step == 0 else f"{queue}\x06\x16{step}" for step in PRIORITY_STEPS]
