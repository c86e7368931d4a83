"""An (X)HTML document's text as a listener would hear it: one block per paragraph, heading, list item or cell.

Scripts, styles, the head, images, ruby annotations, page-break markers and note references are not read; inline
markup (em, a, span...) is dropped and its text kept; whitespace is collapsed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lxml import etree, html

from producer.books.source_model import clean

__all__ = ["HEADINGS", "HtmlText", "html_text"]

HEADINGS = frozenset({"h1", "h2", "h3", "h4", "h5", "h6"})
_BLOCKS = HEADINGS | {
    "address", "article", "aside", "blockquote", "body", "caption", "dd", "div", "dl", "dt", "figcaption", "figure",
    "footer", "header", "hr", "li", "main", "nav", "ol", "p", "pre", "section", "table", "td", "th", "tr", "ul",
}
_DROPPED = frozenset({"audio", "head", "iframe", "img", "math", "noscript", "object", "rp", "rt", "script", "style",
                      "svg", "template", "video"})
_UNSPOKEN_TYPES = frozenset({"noteref", "pagebreak", "doc-noteref", "doc-pagebreak"})
_EPUB_TYPE = "{http://www.idpf.org/2007/ops}type"


@dataclass
class HtmlText:
    """The blocks as (tag of the block element that holds the text, text), and how much of the text is link text."""

    blocks: list[tuple[str, str]] = field(default_factory=list)
    link_chars: int = 0

    @property
    def chars(self) -> int:
        return sum(len(text) for _, text in self.blocks)


def html_text(content: bytes) -> HtmlText:
    """The document's text blocks; XHTML is parsed as XML, and anything that is not well-formed as HTML."""
    root = _parse(content)
    return _Walk().run(root) if root is not None else HtmlText()


def _parse(content: bytes) -> etree._Element | None:
    try:
        return etree.fromstring(content, etree.XMLParser(resolve_entities=False, no_network=True))
    except etree.XMLSyntaxError:
        pass  # HTML entities (&nbsp;) or unclosed tags: read it the way a browser would
    try:
        return html.document_fromstring(content)
    except (etree.ParserError, ValueError):  # an empty document
        return None


def _tag(element: etree._Element) -> str:
    """The element's lower-case local name; "" for comments and processing instructions."""
    return etree.QName(element).localname.lower() if isinstance(element.tag, str) else ""


def _unspoken(element: etree._Element, tag: str) -> bool:
    kinds = f"{element.get(_EPUB_TYPE, '')} {element.get('epub:type', '')} {element.get('role', '')}".split()
    return not tag or tag in _DROPPED or not _UNSPOKEN_TYPES.isdisjoint(kinds)


class _Walk:
    """One pass over the tree with an explicit stack (no recursion limit), collecting text into blocks."""

    def __init__(self) -> None:
        self.out = HtmlText()
        self.buffer: list[str] = []
        self.open_blocks: list[str] = []
        self.links = 0

    def run(self, root: etree._Element) -> HtmlText:
        stack: list[tuple[etree._Element, bool]] = [(root, False)]
        while stack:
            element, closing = stack.pop()
            tag = _tag(element)
            if closing:
                self._close(element, tag)
            elif _unspoken(element, tag):
                pass
            else:
                self._open(element, tag)
                stack.append((element, True))
                stack.extend((child, False) for child in reversed(element))
                continue
            if element is not root:
                self._add(element.tail)
        self._flush()
        return self.out

    def _open(self, element: etree._Element, tag: str) -> None:
        if tag in _BLOCKS:
            self._flush()
            self.open_blocks.append(tag)
        elif tag == "br":
            self.buffer.append(" ")
        elif tag == "a" and element.get("href"):
            self.links += 1
        self._add(element.text)

    def _close(self, element: etree._Element, tag: str) -> None:
        if tag in _BLOCKS:
            self._flush()
            self.open_blocks.pop()
        elif tag == "a" and element.get("href"):
            self.links -= 1

    def _add(self, text: str | None) -> None:
        if text:
            self.buffer.append(text)
            if self.links:
                self.out.link_chars += len(clean(text))

    def _flush(self) -> None:
        text = clean("".join(self.buffer))
        self.buffer.clear()
        if text:
            self.out.blocks.append((self.open_blocks[-1] if self.open_blocks else "body", text))
