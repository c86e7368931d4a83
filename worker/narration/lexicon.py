"""A job's pronunciation lexicon applied to text: whole words or phrases, any case, longest first."""

from __future__ import annotations

import re
from collections.abc import Mapping

from producer.lexicon import APOSTROPHES, word_key

__all__ = ["Lexicon"]


def _pattern(word: str) -> str:
    """A lexicon word as a regex: either apostrophe matches either, a space matches any run of spaces."""
    either = f"[{APOSTROPHES}]"
    return r"\s+".join("".join(either if ch in APOSTROPHES else re.escape(ch) for ch in part) for part in word.split())


class Lexicon:
    """Compiled once per plan: one alternation, longest words first so a phrase wins over a word inside it."""

    def __init__(self, entries: Mapping[str, str]) -> None:
        self._respellings = {word_key(word): (word, respelling) for word, respelling in entries.items()}
        words = sorted(entries, key=lambda w: (-len(w), w))
        alternation = "|".join(_pattern(word) for word in words)
        self._regex = re.compile(rf"(?<!\w)(?:{alternation})(?!\w)", re.IGNORECASE) if words else None

    def _entry(self, written: str) -> tuple[str, str] | None:
        return self._respellings.get(word_key(" ".join(written.split())))

    def respell(self, text: str) -> str:
        """The text with every lexicon word or phrase replaced by its respelling."""
        if self._regex is None:
            return text

        def replace(match: re.Match[str]) -> str:
            entry = self._entry(match.group(0))
            return match.group(0) if entry is None else entry[1]

        return self._regex.sub(replace, text)

    def used(self, text: str) -> set[str]:
        """The lexicon words (as the lexicon writes them) that change this text."""
        if self._regex is None:
            return set()
        used = set()
        for match in self._regex.finditer(text):
            entry = self._entry(match.group(0))
            if entry is not None and entry[1] != match.group(0):
                used.add(entry[0])
        return used
