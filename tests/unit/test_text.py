"""Speakable text and sentence-aware chunking."""

from __future__ import annotations

import re

import pytest

from worker.narration.captions import build_cues
from worker.narration.text import chunk_text, first_chunk_guess, positions_needed, speakable


@pytest.mark.parametrize(
    ("written", "spoken"),
    [
        ("Dr. Smith came at 3:45 p.m. on Jan. 5th, 2024.",
         "Doctor Smith came at three forty-five P M on January fifth, twenty twenty-four."),
        ("It cost $12.50 (plus tax) & 15% more.",
         "It cost twelve dollars, fifty cents, plus tax, and fifteen percent more."),
        ("On 2024-05-01 at 10:00, No. 7 won 30,000 votes.",
         "On May first, twenty twenty-four at ten o'clock, number seven won thirty thousand votes."),
        ("It was -5° at 7:05 am.", "It was minus five degrees at seven oh five A M."),
        ("In 1999, pi was 3.14; 1,500 came.",
         "In nineteen ninety-nine, pi was three point one four; fifteen hundred came."),
        ("We met at 9 p.m. Then we left.", "We met at nine P M. Then we left."),
        ("Room #12, i.e. the 21st one.", "Room number twelve, that is the twenty-first one."),
    ],
)
def test_speakable_spells_out_what_csm_mispronounces(written: str, spoken: str) -> None:
    assert speakable(written) == spoken


def test_no_digits_or_brackets_survive() -> None:
    text = "Born 1887 (in Vienna), moved 2,300 km [approx.] by 1912; paid £40 & 3 pence on 1921-07-14."
    assert not re.search(r"[\d()\[\]&£]", speakable(text))


TEXT = (
    "The first paragraph has a short sentence. Then a second sentence follows it, and it is a little longer. "
    "A third!\n\nThe second paragraph starts here. It is brief.\n\n"
    + "An extremely long sentence that rambles on, clause after clause, with commas; semicolons: and colons, "
    * 6
)


def test_chunks_respect_the_size_and_never_cross_a_paragraph() -> None:
    chunks = chunk_text(TEXT, max_chars=80)
    assert all(len(c.text) <= 80 for c in chunks)
    assert [c.index for c in chunks] == list(range(len(chunks)))
    paragraphs = [p for p in TEXT.split("\n\n")]
    rebuilt, current = [], []
    for chunk in chunks:
        current.append(chunk.display)
        if chunk.paragraph_end:
            rebuilt.append(" ".join(current))
            current = []
    assert [re.sub(r"\s+", "", p) for p in rebuilt] == [re.sub(r"\s+", "", p) for p in paragraphs]


def test_sentences_are_kept_whole_when_they_fit() -> None:
    chunks = chunk_text("One two three. Four five six. Seven eight nine.", max_chars=30)
    assert [c.text for c in chunks] == ["One two three. Four five six.", "Seven eight nine."]


def test_positions_include_anchor_text_audio_and_chunk() -> None:
    assert positions_needed("abcd", 100) == 110
    assert positions_needed("abcd", 100, anchor_text="abcd", anchor_frames=50) == 170


@pytest.mark.parametrize("text", ["a" * 5000, "&" * 140, "1" * 100, "$" + "9" * 40, "word " * 400, "x, " * 300])
def test_text_that_does_not_split_nicely_still_fits_every_chunk(text: str) -> None:
    chunks = chunk_text(text, max_chars=300)
    assert chunks and all(0 < len(c.text) <= 300 for c in chunks)


OPENING = ("When the lighthouse keeper woke that morning, the sea was flat, the gulls were silent, and the lamp, which "
           "had burned all night without a flicker, was cold. He went down to the harbour. " + "The boats knocked "
           "together in the swell while the fishermen argued about the weather and the price of bait. " * 8)


def test_the_first_chunk_is_a_clause_within_the_budget_when_the_first_sentence_is_long() -> None:
    chunks = chunk_text(OPENING, max_chars=300, first_chunk_chars=100)
    first, second, *rest = chunks
    assert first.text == ("When the lighthouse keeper woke that morning, the sea was flat, the gulls were silent, "
                          "and the lamp,")
    assert first.display == first.text and not first.paragraph_end
    assert second.text.startswith("which had burned all night without a flicker, was cold. He went down")
    assert all(len(c.text) <= 300 for c in chunks) and min(len(c.text) for c in rest[:-1]) > 200, "normal size"
    assert " ".join(c.display for c in chunks) == OPENING.strip(), "every word once, in order"


def test_the_first_chunk_takes_whole_sentences_while_they_fit() -> None:
    text = "Chapter one. It was late. " + "The rain came down on the roofs of the town all night long. " * 10
    first, *_ = chunk_text(text, max_chars=300, first_chunk_chars=100)
    assert first.text == "Chapter one. It was late. The rain came down on the roofs of the town all night long."
    assert len(chunk_text(text, max_chars=300, first_chunk_chars=40)[0].text) <= 40


def test_the_budget_counts_speakable_characters_and_captions_keep_the_written_words() -> None:
    text = "On 2024-05-01 at 10:00, No. 7 won 30,000 votes. Then everyone went home."
    first, second = chunk_text(text, first_chunk_chars=60)
    assert first.display == "On 2024-05-01 at 10:00,"
    assert first.text == "On May first, twenty twenty-four at ten o'clock,"
    assert second.display == "No. 7 won 30,000 votes. Then everyone went home."
    cues = build_cues([(first.display, 0.0, 2.0), (second.display, 2.25, 5.0)])
    assert [c.text for c in cues] == ["On 2024-05-01 at 10:00,", "No. 7 won 30,000 votes.", "Then everyone went home."]


def test_a_short_text_is_one_chunk_and_zero_turns_the_short_first_chunk_off() -> None:
    assert [c.text for c in chunk_text("Hello there. How are you?", first_chunk_chars=100)] == [
        "Hello there. How are you?"]
    assert chunk_text(OPENING, max_chars=300, first_chunk_chars=0) == chunk_text(OPENING, max_chars=300)
    assert len(chunk_text(OPENING, max_chars=300, first_chunk_chars=0)[0].text) > 250


def test_only_the_first_paragraph_has_a_short_chunk() -> None:
    text = "Part one.\n\n" + OPENING
    chunks = chunk_text(text, max_chars=300, first_chunk_chars=100)
    assert chunks[0].text == "Part one." and chunks[0].paragraph_end
    assert chunks[1:] == [c.__class__(c.index + 1, c.text, c.display, c.paragraph_end)
                          for c in chunk_text(OPENING, max_chars=300)], "the next paragraph is chunked as usual"


@pytest.mark.parametrize("text", ["a" * 5000, "word " * 400, "x, " * 300, TEXT])
def test_the_first_chunk_fits_its_budget_whatever_the_text(text: str) -> None:
    chunks = chunk_text(text, max_chars=300, first_chunk_chars=50)
    assert 0 < len(chunks[0].text) <= 50 and all(0 < len(c.text) <= 300 for c in chunks)
    assert [c.index for c in chunks] == list(range(len(chunks)))


@pytest.mark.parametrize("first_chunk_chars", [0, 100])
@pytest.mark.parametrize("text", [TEXT, OPENING, "Part one.\n\n" + OPENING, "Hello there.", OPENING * 20,
                                  "\n\n  A lone line.\n\nThen more text."])
def test_the_first_chunk_guessed_from_the_opening_is_the_plans(text: str, first_chunk_chars: int) -> None:
    assert first_chunk_guess(text, 300, first_chunk_chars) == chunk_text(text, 300, first_chunk_chars)[0]


def test_a_guess_cut_inside_the_first_chunk_differs_from_the_plan() -> None:
    """One unpunctuated 'sentence' longer than the opening: the opening halves it elsewhere (the worker then
    generates the plan's first chunk again)."""
    text = "word " * 2000
    assert first_chunk_guess(text, 300, 0) != chunk_text(text, 300, 0)[0]
    assert first_chunk_guess("", 300, 100) is None and first_chunk_guess("\n\n \n\n", 300, 100) is None
