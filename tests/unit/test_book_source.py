"""A book file read into chapters: EPUB (3 and 2), Markdown and plain text give the chapters a listener expects, in
order, with their titles; DRM, broken files and books over the limits are refused with messages that say why."""

from __future__ import annotations

import io
import zipfile

import pytest
from ebooklib import epub

from producer.books.source import BookSource, read_book
from producer.errors import InvalidRequestError

JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(64)
PNG = b"\x89PNG\r\n\x1a\n" + bytes(64)
AES = "http://www.w3.org/2001/04/xmlenc#aes128-cbc"
FONT_OBFUSCATION = "http://www.idpf.org/2008/embedding"


def _refused(data: bytes, filename: str, **limits: int) -> str:
    with pytest.raises(InvalidRequestError) as caught:
        read_book(data, filename, **limits)
    assert caught.value.fields and caught.value.fields[0][0] == "file"
    return str(caught.value)


def _titles(book: BookSource) -> list[str]:
    return [chapter.title for chapter in book.chapters]


# EPUB 3, built with ebooklib as an author's tool would


def _page(name: str, body: str, title: str = "") -> epub.EpubHtml:
    page = epub.EpubHtml(uid=name.split(".")[0], file_name=name, title=title, lang="en")
    page.content = f"<html><head><title>{title}</title></head><body>{body}</body></html>"
    return page


def _epub3() -> bytes:
    book = epub.EpubBook()
    book.set_identifier("urn:uuid:0b1e4e4e-0000-4000-8000-000000000001")
    book.set_title("The Long Road")
    book.set_language("en")
    book.add_author("Ada Writer")
    book.set_cover("images/cover.jpg", JPEG)  # the cover image and ebooklib's own cover page (linear="no")
    title_page = _page("titlepage.xhtml", '<div class="cover"><img src="images/cover.jpg" alt="The Long Road"/></div>')
    chapters = [
        _page("c1.xhtml", "<h1>Chapter One</h1><p>It began <em>quietly</em>,\n   in the rain.</p>"
                          "<p>Then<br/>it did not.</p><script>alert('no')</script><style>p{color:red}</style>"),
        _page("c2.xhtml", "<p>No heading at all, only a TOC entry.</p><blockquote><p>A quoted line.</p></blockquote>"),
        _page("c3.xhtml", "<section><h2>The Third Door</h2><p>Behind it: a <a href='c1.xhtml'>hallway</a>.</p>"
                          "<ul><li>a lamp</li><li>a chair</li></ul></section>"),
        _page("c4.xhtml", "<h1>Chapter 4<br/>The Storm</h1><p>Wind<span epub:type='noteref'>1</span> rose.</p>"),
        _page("c5.xhtml", "<h1>Interlude</h1><table><tr><td>North</td><td>South</td></tr></table>"),
        _page("c6.xhtml", "<h1>Last Light</h1><p>The end.</p>"),
    ]
    empty = _page("empty.xhtml", "<div>  </div><p>\u00a0</p>")
    for page in (title_page, *chapters, empty):
        book.add_item(page)
    book.toc = [epub.Link("c1.xhtml", "Chapter One", "c1"), epub.Link("c2.xhtml", "The Second Morning", "c2"),
                epub.Link("c4.xhtml#top", "Chapter 4: The Storm", "c4"), epub.Link("c5.xhtml", "Interlude", "c5"),
                epub.Link("c6.xhtml", "Last Light", "c6")]
    book.add_item(epub.EpubNcx())
    book.add_item(epub.EpubNav())
    book.spine = ["cover", title_page, "nav", chapters[0], chapters[1], empty, *chapters[2:]]
    out = io.BytesIO()
    epub.write_epub(out, book)
    return out.getvalue()


def test_an_epub3_reads_as_its_six_chapters_with_metadata_and_cover() -> None:
    book = read_book(_epub3(), "long-road.epub")
    assert (book.title, book.author, book.language) == ("The Long Road", "Ada Writer", "en")
    assert (book.cover, book.cover_type) == (JPEG, "image/jpeg")
    assert _titles(book) == ["Chapter One", "The Second Morning", "The Third Door", "Chapter 4: The Storm",
                             "Interlude", "Last Light"]
    texts = [chapter.text for chapter in book.chapters]
    assert texts[0] == "It began quietly, in the rain.\n\nThen it did not."
    assert texts[1] == "No heading at all, only a TOC entry.\n\nA quoted line."
    assert texts[2] == "Behind it: a hallway.\n\na lamp\n\na chair"
    assert texts[3] == "Wind rose."  # its two-line heading is the title, the note reference is not read
    assert texts[4] == "North\n\nSouth"
    assert texts[5] == "The end."
    assert book.chars == sum(len(c.title) + len(c.text) for c in book.chapters)


# EPUB 2, built by hand: NCX, <meta name="cover">, HTML entities, a table of contents page, creators with roles


def _zip(files: dict[str, str | bytes], mimetype: bytes = b"application/epub+zip") -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("mimetype", mimetype, compress_type=zipfile.ZIP_STORED)
        for name, content in files.items():
            archive.writestr(name, content)
    return out.getvalue()


CONTAINER = """<?xml version="1.0"?>
<container version="1.0" xmlns="urn:oasis:names:tc:opendocument:xmlns:container"><rootfiles>
<rootfile full-path="OEBPS/content.opf" media-type="application/oebps-package+xml"/></rootfiles></container>"""

OPF2 = """<?xml version="1.0" encoding="utf-8"?>
<package xmlns="http://www.idpf.org/2007/opf" version="2.0" unique-identifier="uid">
 <metadata xmlns:dc="http://purl.org/dc/elements/1.1/" xmlns:opf="http://www.idpf.org/2007/opf">
  <dc:title>  Old   Tales </dc:title><dc:identifier id="uid">tales-1</dc:identifier><dc:language>fr</dc:language>
  <dc:creator opf:role="ill">Ivy Drawer</dc:creator><dc:creator opf:role="aut">Otto Teller</dc:creator>
  <meta name="cover" content="cover-png"/>
 </metadata>
 <manifest>
  <item id="ncx" href="toc.ncx" media-type="application/x-dtbncx+xml"/>
  <item id="cover-png" href="img/front.png" media-type="image/png"/>
  <item id="contents" href="text/contents.html" media-type="application/xhtml+xml"/>
  <item id="one" href="text/one.html" media-type="application/xhtml+xml"/>
  <item id="two" href="text/two%20b.html" media-type="application/xhtml+xml"/>
 </manifest>
 <spine toc="ncx"><itemref idref="contents"/><itemref idref="one"/><itemref idref="two"/></spine>
</package>"""

NCX = """<?xml version="1.0" encoding="utf-8"?>
<ncx xmlns="http://www.daisy.org/z3986/2005/ncx/" version="2005-1"><head/><docTitle><text>Old Tales</text></docTitle>
<navMap>
 <navPoint id="p1" playOrder="1"><navLabel><text>The Miller</text></navLabel><content src="text/one.html"/></navPoint>
 <navPoint id="p2" playOrder="2"><navLabel><text>The Baker's Son</text></navLabel>
  <content src="text/two%20b.html#start"/></navPoint>
</navMap></ncx>"""


def _html(body: str) -> str:
    return f'<html xmlns="http://www.w3.org/1999/xhtml"><head><title>x</title></head><body>{body}</body></html>'


def _epub2_files() -> dict[str, str | bytes]:
    return {
        "META-INF/container.xml": CONTAINER, "OEBPS/content.opf": OPF2, "OEBPS/toc.ncx": NCX,
        "OEBPS/img/front.png": PNG,
        "OEBPS/text/contents.html": _html('<h2>Index</h2><p><a href="one.html">The Miller</a></p>'
                                          '<p><a href="two%20b.html">The Baker\'s Son</a></p>'),
        # &nbsp; is not XML: the document is read as HTML instead
        "OEBPS/text/one.html": _html("<h3>I. The Miller</h3><p>Flour&nbsp;everywhere.</p><p>* * *</p><p>Bread.</p>"),
        "OEBPS/text/two b.html": _html("<p id='start'>He baked.</p>"),
    }


def test_an_epub2_takes_titles_from_its_ncx_and_skips_its_contents_page() -> None:
    book = read_book(_zip(_epub2_files()), "Old Tales.EPUB")
    assert (book.title, book.author, book.language) == ("Old Tales", "Otto Teller", "fr")
    assert (book.cover, book.cover_type) == (PNG, "image/png")
    assert _titles(book) == ["The Miller", "The Baker's Son"]
    assert [chapter.text for chapter in book.chapters] == ["I. The Miller\n\nFlour everywhere.\n\nBread.", "He baked."]


def _encryption(algorithm: str) -> str:
    return f"""<encryption xmlns="urn:oasis:names:tc:opendocument:xmlns:container"
      xmlns:enc="http://www.w3.org/2001/04/xmlenc#"><enc:EncryptedData>
      <enc:EncryptionMethod Algorithm="{algorithm}"/>
      <enc:CipherData><enc:CipherReference URI="OEBPS/text/one.html"/></enc:CipherData>
    </enc:EncryptedData></encryption>"""


def test_a_drm_protected_epub_is_refused() -> None:
    message = _refused(_zip({**_epub2_files(), "META-INF/encryption.xml": _encryption(AES)}), "locked.epub")
    assert "DRM-protected" in message and "locked.epub" in message and AES in message
    assert "DRM-protected" in _refused(_zip({**_epub2_files(), "META-INF/rights.xml": "<rights/>"}), "adobe.epub")


def test_an_epub_with_only_obfuscated_fonts_is_read() -> None:
    files = {**_epub2_files(), "META-INF/encryption.xml": _encryption(FONT_OBFUSCATION)}
    assert _titles(read_book(_zip(files), "fonts.epub")) == ["The Miller", "The Baker's Son"]


def test_broken_epubs_are_refused_with_what_is_wrong() -> None:
    good = _zip(_epub2_files())
    assert "not an EPUB (not a ZIP archive)" in _refused(b"%PDF-1.7 not a zip", "book.epub")
    assert "damaged or truncated" in _refused(good[: len(good) // 2], "book.epub")
    assert "mimetype" in _refused(_zip(_epub2_files(), mimetype=b"application/zip"), "book.epub")
    broken_opf = _zip({**_epub2_files(), "OEBPS/content.opf": OPF2.replace("</manifest>", "")})
    assert "OEBPS/content.opf is not well-formed XML" in _refused(broken_opf, "book.epub")
    missing = {name: content for name, content in _epub2_files().items() if name != "OEBPS/text/one.html"}
    assert "no item named 'OEBPS/text/one.html'" in _refused(_zip(missing), "book.epub")
    broken_ncx = _zip({**_epub2_files(), "OEBPS/toc.ncx": "<ncx"})
    assert "OEBPS/toc.ncx is not well-formed XML" in _refused(broken_ncx, "book.epub")


# Markdown


def test_markdown_with_two_top_level_headings_and_front_matter() -> None:
    text = """---
title: "Garden: A Year"
author: [Rosa Green, Basil Gray]
---
# Spring

Seeds go in *early*, see [the guide](https://example.org) ![a seed](seed.png) and use `compost`.
Rain helps.

```python
print("code is not read")
```

<div class="note">tags dropped, text kept</div>

# Summer

- water daily
- pick **beans**
"""
    book = read_book(text.encode(), "garden.md")
    assert (book.title, book.author) == ("Garden: A Year", "Rosa Green, Basil Gray")
    assert _titles(book) == ["Spring", "Summer"]
    assert book.chapters[0].text == "Seeds go in early, see the guide and use compost. Rain helps."
    assert book.chapters[1].text == "water daily\n\npick beans"
    assert "---" not in book.chapters[0].text and "Garden" not in book.chapters[0].text


def test_markdown_with_one_title_heading_over_second_level_chapters() -> None:
    text = "# The Atlas\n\nA short foreword.\n\n## North\n\nCold.\n\n### Ice\n\nThick.\n\n## South\n\nWarm.\n"
    book = read_book(text.encode(), "atlas.markdown")
    assert book.title == "The Atlas"
    assert _titles(book) == ["", "North", "South"]
    assert [chapter.text for chapter in book.chapters] == ["A short foreword.", "Cold.\n\nIce\n\nThick.", "Warm."]


def test_markdown_splits_at_the_highest_repeated_level_or_not_at_all() -> None:
    text = "## Notes only once\n\n### Day 1\n\nSun.\n\n### Day 2\n\nRain.\n"
    book = read_book(text.encode(), "diary.md")
    assert book.title == "diary" and _titles(book) == ["", "Day 1", "Day 2"]
    assert book.chapters[0].text == "Notes only once"
    single = read_book(b"# Essay\n\nOne thought.\n\nAnother.\n", "essay.md")
    assert single.title == "Essay"
    assert [(c.title, c.text) for c in single.chapters] == [("", "One thought.\n\nAnother.")]


# Plain text


def test_plain_text_with_chapter_headings() -> None:
    text = ("THE STORMY SEA\r\n\r\nCHAPTER I.\r\n\r\nIt was a dark\r\nand stormy night.\r\n\r\n"
            "The end of a start.\r\n\r\nPart two is where it gets wet.\r\n\r\nCHAPTER II. The Calm\r\n\r\n"
            "Quiet.\r\n\r\nEpilogue\r\n\r\nFin.\r\n")
    book = read_book(("\ufeff" + text).encode(), "sea.txt")
    assert book.title == "THE STORMY SEA"
    assert _titles(book) == ["CHAPTER I", "CHAPTER II. The Calm", "Epilogue"]
    assert book.chapters[0].text == ("It was a dark and stormy night.\n\nThe end of a start.\n\n"
                                     "Part two is where it gets wet.")
    assert [chapter.text for chapter in book.chapters[1:]] == ["Quiet.", "Fin."]


def test_plain_text_with_numeral_headings_keeps_its_opening_text() -> None:
    book = read_book(b"A note before.\nIt runs two lines.\n\nI\n\nOne.\n\nII.\n\nTwo.\n", "poems.txt")
    assert book.title == "poems" and _titles(book) == ["", "I", "II"]
    assert [c.text for c in book.chapters] == ["A note before. It runs two lines.", "One.", "Two."]


def test_plain_text_without_headings_is_one_chapter() -> None:
    book = read_book(b"Just a letter.\nTwo lines.\n\n\n\nChapter 1\n\nSigned.\n", "letter.txt")
    assert book.title == "letter"
    assert [(c.title, c.text) for c in book.chapters] == [("", "Just a letter. Two lines.\n\nChapter 1\n\nSigned.")]


def test_text_that_is_not_utf8_is_refused_naming_the_byte() -> None:
    message = _refused("Première ligne\n".encode() + "deuxième".encode("latin-1"), "latin.txt")
    assert "latin.txt" in message and "not UTF-8" in message and "offset 21" in message and "line 2" in message


# Limits and refusals


def test_a_chapter_over_the_limit_is_split_into_parts_within_it() -> None:
    paragraphs = [f"Paragraph {i} says a few words about the weather today." for i in range(12)]
    long_sentence_paragraph = " ".join(f"Sentence {i} is here." for i in range(20))
    text = "# Weather\n\n" + "\n\n".join(paragraphs) + "\n\n" + long_sentence_paragraph + "\n\n" + "x" * 250
    text += "\n\n# Short\n\nBrief.\n"
    book = read_book(text.encode(), "weather.md", max_chapter_chars=120)
    assert all(len(chapter.text) <= 120 for chapter in book.chapters)
    weather = [chapter for chapter in book.chapters if chapter.title.startswith("Weather")]
    assert [c.title for c in weather[:3]] == ["Weather", "Weather (part 2)", "Weather (part 3)"]
    assert book.chapters[-1].title == "Short" and book.chapters[-1].text == "Brief."
    assert paragraphs[0] in weather[0].text  # whole paragraphs stay together when they fit
    assert "Sentence 0 is here. Sentence 1 is here." in " ".join(c.text for c in weather)  # then whole sentences
    said = "".join(c.text for c in weather).replace("\n", "").replace(" ", "")
    assert said == "".join([*paragraphs, long_sentence_paragraph, "x" * 250]).replace(" ", "")  # nothing lost


def test_a_book_over_the_limit_is_refused_with_both_numbers() -> None:
    message = _refused(("word " * 300).encode(), "big.txt", max_book_chars=1_000)
    assert "1,499 characters" in message and "1,000" in message


def test_nothing_to_read_is_refused() -> None:
    assert "no readable text" in _refused(b"\n\n  * * *\n", "blank.txt")
    assert "no readable text" in _refused(b"```\ncode only\n```\n", "code.md")


def test_titles_are_normalized_and_at_most_200_characters() -> None:
    book = read_book(("# " + "very " * 100 + "long\n\nText.\n\n#   Two \t spaced\n\nMore.\n").encode(), "t.md")
    assert len(book.chapters[0].title) <= 200 and book.chapters[0].title.startswith("very very")
    assert book.chapters[1].title == "Two spaced"


def test_other_file_types_are_refused() -> None:
    assert ".epub, .md, .markdown, .txt" in _refused(b"%PDF", "book.pdf")
