"""The state file of a running `echoforge up`: `<data-dir>/stack.json`, where its services are.

`echoforge up` writes it once its services are up and removes it when it stops. `echoforge` run without
ECHOFORGE_REDIS_URL in the folder of a live `up` (its default data dir, ./data) reads it and reaches that stack
instead of the default redis://127.0.0.1:6379/0, which may be somebody else's Redis.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from producer.processes import is_alive
from producer.settings import Settings, redact_url

__all__ = ["CLI_STATE_PATH", "STATE_FILE", "StackState", "cli_settings", "read", "remove", "write"]

STATE_FILE = "stack.json"
# Where the CLI looks: below the current directory, in `echoforge up`'s default --data-dir.
CLI_STATE_PATH = Path("data") / STATE_FILE


@dataclass(frozen=True)
class StackState:
    redis_url: str  # may hold a password: the file is the owner's only, and the URL is redacted when shown
    storage_url: str
    flower_url: str
    pid: int  # the `echoforge up` process
    queue: str
    api_url: str = ""


def write(data_dir: Path, state: StackState) -> Path:
    """Replace `<data_dir>/stack.json` atomically (a temp file renamed over it), mode 0600."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / STATE_FILE
    fd, tmp = tempfile.mkstemp(prefix=f".{STATE_FILE}.", dir=data_dir)  # created 0600
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(asdict(state), f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read(path: Path) -> StackState:
    """The state in `path`; OSError when it cannot be read, ValueError when it is not a state file."""
    data = json.loads(path.read_text())
    try:
        return StackState(redis_url=str(data["redis_url"]), storage_url=str(data["storage_url"]),
                          flower_url=str(data["flower_url"]), pid=int(data["pid"]), queue=str(data["queue"]),
                          api_url=str(data.get("api_url", "")))
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"not the state file of `echoforge up` ({type(e).__name__}: {e})") from e


def remove(data_dir: Path) -> None:
    """Delete `<data_dir>/stack.json` if this process wrote it."""
    path = data_dir / STATE_FILE
    try:
        ours = read(path).pid == os.getpid()
    except (OSError, ValueError):
        return
    if ours:
        path.unlink(missing_ok=True)


def cli_settings(path: Path = CLI_STATE_PATH) -> Settings:
    """The Settings of a CLI command: the environment, completed by the stack of a live `echoforge up`.

    Only when ECHOFORGE_REDIS_URL is not set and `path` names a running `up`: its Redis URL, storage URL and queue
    then fill in whichever of those the environment does not set. Says on stderr which stack it uses, or why it
    ignores the file.
    """
    if _set_in_environment("redis_url"):
        return Settings()
    shown = str(path) if path.is_absolute() else f"./{path}"
    try:
        state = read(path)
    except FileNotFoundError:
        return Settings()
    except (OSError, ValueError) as e:
        _say(f"ignoring {shown}: {e}")
        return Settings()
    if not is_alive(state.pid):
        _say(f"ignoring {shown}: its `echoforge up` (pid {state.pid}) is not running")
        return Settings()
    from_stack: dict[str, Any] = {"redis_url": state.redis_url, "storage_url": state.storage_url, "queue": state.queue}
    settings = Settings(**{name: value for name, value in from_stack.items() if not _set_in_environment(name)})
    _say(f"using the stack of `echoforge up` (pid {state.pid}, {shown}): {redact_url(settings.redis_url)}")
    return settings


def _set_in_environment(field: str) -> bool:
    """Whether Settings reads `field` from the environment (its variable names are case-insensitive)."""
    name = f"ECHOFORGE_{field}".upper()
    return any(key.upper() == name for key in os.environ)


def _say(message: str) -> None:
    print(f"echoforge: {message}", file=sys.stderr)
