"""The shape of the code: imports run one way (runtime -> narration core -> models; everything -> producer), the
narration core never needs Celery, and no module imports itself back through another."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RUNTIME = {"worker.app", "worker.tasks", "worker.signals", "worker.runtime", "worker.job_runner", "worker.reaper",
           "worker.lock", "worker.metrics", "worker.batcher"}
QUEUE_LIBRARIES = {"celery", "kombu", "prometheus_client"}
TORCH_LIBRARIES = {"torch", "torchaudio", "transformers", "moshi"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module a file imports, at any depth, except under `if TYPE_CHECKING:`."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return found


def _graph() -> dict[str, set[str]]:
    files = [*REPO.glob("producer/**/*.py"), *REPO.glob("worker/**/*.py")]
    modules = {_module_name(f): f for f in files}
    return {name: _imports(path) for name, path in modules.items()}


def _violations(prefix: str, forbidden: set[str]) -> list[str]:
    return [f"{module} imports {target}" for module, targets in _graph().items() if module.startswith(prefix)
            for target in targets if target in forbidden or target.split(".")[0] in forbidden
            or any(target.startswith(f + ".") for f in forbidden)]


def test_the_producer_never_imports_the_worker_or_torch() -> None:
    assert _violations("producer", {"worker", *TORCH_LIBRARIES}) == []


def test_the_narration_core_imports_neither_celery_nor_the_runtime() -> None:
    assert _violations("worker.narration", RUNTIME | QUEUE_LIBRARIES) == []


def test_the_model_layer_is_closed() -> None:
    assert _violations("worker.models", RUNTIME | QUEUE_LIBRARIES | {"worker.narration"}) == []


def test_there_is_no_import_cycle() -> None:
    graph = _graph()
    project = {name: {t for t in targets if t in graph} for name, targets in graph.items()}
    cycles: list[list[str]] = []

    def walk(module: str, path: list[str]) -> None:
        for target in sorted(project[module]):
            if target in path:
                cycles.append([*path[path.index(target):], target])
            elif len(path) < 12:
                walk(target, [*path, target])

    for start in sorted(project):
        walk(start, [start])
    assert cycles == []


def test_the_narration_core_runs_with_celery_unimportable() -> None:
    core = sorted(_module_name(f) for f in REPO.glob("worker/narration/*.py"))
    blocked = "; ".join(f"sys.modules[{name!r}] = None" for name in sorted(QUEUE_LIBRARIES))
    code = f"import sys; {blocked}; import importlib; [importlib.import_module(m) for m in {core!r}]"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
