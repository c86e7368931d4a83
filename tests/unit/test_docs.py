"""The docs say what the code does: the error table is the ErrorCode enum, every exception carries a code, links
resolve."""

from __future__ import annotations

import re
from pathlib import Path

import worker.models  # noqa: F401  (registers the model layer's exceptions in the tree)
from producer.errors import EchoForgeError, ErrorCode

REPO = Path(__file__).resolve().parents[2]


def _subclasses(cls: type) -> list[type]:
    return [sub for direct in cls.__subclasses__() for sub in (direct, *_subclasses(direct))]


def test_the_documented_error_codes_are_exactly_the_enum_in_order() -> None:
    text = (REPO / "docs" / "operations.md").read_text()
    table = text[text.index("| code | meaning |"):].split("\n\n")[0]
    documented = re.findall(r"^\| `([a-z_]+)` \|", table, flags=re.M)
    assert documented == [code.value for code in ErrorCode]


def test_every_exception_in_the_one_tree_carries_an_enum_code() -> None:
    tree = [EchoForgeError, *_subclasses(EchoForgeError)]
    assert {cls.__name__ for cls in tree} >= {"CSMModelError", "CSMModelLoadError", "JobBusyError", "StorageError"}
    assert all(isinstance(cls.code, ErrorCode) for cls in tree)


def test_every_relative_link_in_the_readme_and_docs_resolves() -> None:
    broken = []
    for page in [REPO / "README.md", *(REPO / "docs").glob("*.md")]:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text()):
            if not (page.parent / target).exists():
                broken.append(f"{page.name} -> {target}")
    assert broken == []


def test_every_setting_is_in_the_configuration_table() -> None:
    from producer.settings import Settings

    table = (REPO / "docs" / "configuration.md").read_text()
    missing = [f"ECHOFORGE_{name.upper()}" for name in Settings.model_fields
               if f"`ECHOFORGE_{name.upper()}`" not in table]
    assert missing == []
