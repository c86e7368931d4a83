"""Book files built at test time: an EPUB 3 with a cover, a table of contents page and chapters (ebooklib)."""

from __future__ import annotations

import io

import numpy as np

__all__ = ["cover_png", "make_epub"]


def cover_png() -> bytes:
    """A small real PNG image (a gradient)."""
    import av

    buffer = io.BytesIO()
    with av.open(buffer, "w", format="image2pipe") as container:
        stream = container.add_stream("png", rate=1)
        stream.width, stream.height, stream.pix_fmt = 32, 48, "rgb24"
        pixels = np.zeros((48, 32, 3), dtype=np.uint8)
        pixels[..., 0] = np.arange(32, dtype=np.uint8) * 8
        frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return buffer.getvalue()


def make_epub(chapters: list[tuple[str, str]], title: str = "The Keeper", author: str = "A. Writer",
              cover: bytes | None = None) -> bytes:
    """An EPUB 3: `chapters` as (title, text with paragraphs split by blank lines), each an XHTML file whose <h1>
    is its title; plus a cover image and page, and a nav document listed in the spine (a table of contents page)."""
    from ebooklib import epub

    book = epub.EpubBook()
    book.set_identifier("echoforge-test-book")
    book.set_title(title)
    book.set_language("en")
    book.add_author(author)
    if cover is not None:
        book.set_cover("cover.png", cover)
    items = []
    for i, (heading, text) in enumerate(chapters):
        item = epub.EpubHtml(title=heading, file_name=f"chapter-{i}.xhtml", lang="en")
        paragraphs = "".join(f"<p>{p}</p>" for p in text.split("\n\n"))
        item.content = f"<html><body><h1>{heading}</h1>{paragraphs}</body></html>"
        book.add_item(item)
        items.append(item)
    book.toc = items
    book.add_item(epub.EpubNcx())
    book.add_item(epub.EpubNav())
    book.spine = (["cover"] if cover is not None else []) + ["nav", *items]
    buffer = io.BytesIO()
    epub.write_epub(buffer, book)
    return buffer.getvalue()
