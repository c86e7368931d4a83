"""`echoforge keys …` and `echoforge serve`: the HTTP API's operator commands (they hold the Redis password)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile

from producer.api_keys import ApiKeyStore
from producer.settings import Settings
from producer.store import connect_redis

__all__ = ["run_keys", "run_serve"]


def run_keys(args: argparse.Namespace, settings: Settings) -> int:
    store = ApiKeyStore(connect_redis(settings))
    if args.keys_command == "create":
        key, token = store.create(args.tenant, args.scope)
        shown = {**key.to_public(), "secret": token, "webhook_secret": store.webhook_secret(key.tenant)}
        print(json.dumps(shown, indent=2) if args.json else
              f"{key.id}  tenant={key.tenant}  scopes={','.join(key.scopes)}\n{token}\n"
              "(the secret is shown only now; keep it somewhere safe)")
    elif args.keys_command == "list":
        found = store.list(args.tenant)
        if args.json:
            print(json.dumps([k.to_public() for k in found], indent=2))
        for key in [] if args.json else found:
            print(f"{key.id}  tenant={key.tenant}  scopes={','.join(key.scopes)}"
                  f"{'  revoked' if key.revoked_at else ''}")
    elif args.keys_command == "revoke":
        print(f"{store.revoke(args.key_id).id} revoked")
    else:
        print(store.webhook_secret(args.tenant, rotate=args.rotate))
    return 0


def run_serve(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    made = _metrics_folder(args.workers)
    try:
        uvicorn.run("producer.api.app:create_app_from_environment", factory=True,
                    host=args.host or settings.api_host,
                    port=args.port if args.port is not None else settings.api_port, workers=args.workers,
                    log_level="info", access_log=False)
    finally:
        if made:
            shutil.rmtree(made, ignore_errors=True)
    return 0


def _metrics_folder(workers: int) -> str | None:
    """Several API processes count into one multiprocess folder (prometheus_client's PROMETHEUS_MULTIPROC_DIR),
    so /metrics answers for all of them: the operator's, or a fresh one made here (returned, to remove at exit)."""
    if workers <= 1 or os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return None
    made = tempfile.mkdtemp(prefix="echoforge-api-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = made  # the worker processes inherit it
    return made
