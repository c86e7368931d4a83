"""An EPUB (2 or 3) read into chapters: one per spine document that has something to narrate.

The archive is checked first (a ZIP, the EPUB mimetype, no DRM, no damaged member, well-formed container and
package documents) so that every refusal says what is wrong; ebooklib then reads the package, the TOC (nav document
or NCX) and the items. The nav/TOC, cover pages and sections without text are skipped.
"""

from __future__ import annotations

import io
import posixpath
import zipfile
import zlib
from urllib.parse import unquote

from ebooklib import ITEM_COVER, epub
from lxml import etree

from producer.books.html_text import HEADINGS, html_text
from producer.books.source_model import BookDraft, SourceChapter, book_error, clean, join_paragraphs

__all__ = ["FONT_OBFUSCATION", "MAX_UNPACKED_BYTES", "read_epub"]

EPUB_MIMETYPE = b"application/epub+zip"
FONT_OBFUSCATION = frozenset({"http://www.idpf.org/2008/embedding", "http://ns.adobe.com/pdf/enc#RC"})
MAX_UNPACKED_BYTES = 1 << 30  # a ZIP bomb is refused before anything is inflated
MAX_LINK_SHARE = 0.5  # a document whose text is mostly links is a table of contents
_CONTENTS_TITLES = frozenset({"contents", "tableofcontents", "toc"})
_XMLENC = "{http://www.w3.org/2001/04/xmlenc#}"
_OPF = "{http://www.idpf.org/2007/opf}"
_CONTAINER = "{urn:oasis:names:tc:opendocument:xmlns:container}"
_DOCUMENT_TYPES = frozenset({"application/xhtml+xml", "text/html"})


def read_epub(data: bytes, filename: str) -> BookDraft:
    """The book's Dublin Core metadata, cover image and chapters in spine order."""
    _check_archive(data, filename)
    try:
        book = epub.read_epub(io.BytesIO(data), {"ignore_ncx": True})
    except Exception as e:  # ebooklib lets whatever its parsing meets escape (KeyError, AttributeError, lxml's)
        reason = getattr(e, "msg", None) or (e.args[0] if isinstance(e, KeyError) and e.args else
                                             f"its package or table of contents is malformed ({type(e).__name__})")
        raise book_error(filename, f"not a readable EPUB: {reason}") from e
    draft = BookDraft(title=_dublin_core(book, "title"), author=_author(book), language=_dublin_core(book, "language"))
    draft.cover, draft.cover_type = _cover(book)
    toc = _toc_titles(book)
    for idref, linear in book.spine:
        item = book.get_item_with_id(idref)
        # linear="no" marks what a reading system may skip: the cover page, pop-up notes.
        if item is None or linear == "no" or isinstance(item, epub.EpubNav) or item.media_type not in _DOCUMENT_TYPES:
            continue
        chapter = _chapter(item.content, toc.get(posixpath.normpath(item.file_name), ""))
        if chapter is not None:
            draft.chapters.append(chapter)
    return draft


def _check_archive(data: bytes, filename: str) -> None:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as e:
        if data.startswith(b"PK"):  # a ZIP's first bytes, but its directory at the end is missing or broken
            raise book_error(filename, "the EPUB is damaged or truncated (its ZIP directory cannot be read)") from e
        raise book_error(filename, "not an EPUB (not a ZIP archive)") from e
    with archive:
        names = set(archive.namelist())
        if "mimetype" not in names:
            raise book_error(filename, "not an EPUB (the ZIP archive has no mimetype file)")
        unpacked = sum(info.file_size for info in archive.infolist())
        if unpacked > MAX_UNPACKED_BYTES:
            raise book_error(filename, f"the EPUB unpacks to {unpacked:,} bytes; the limit is {MAX_UNPACKED_BYTES:,}")
        try:
            mimetype = archive.read("mimetype").strip()
            if mimetype != EPUB_MIMETYPE:
                raise book_error(filename, f"not an EPUB (its mimetype is {mimetype[:60].decode(errors='replace')!r}, "
                                           "not 'application/epub+zip')")
            _check_drm(archive, names, filename)
            damaged = archive.testzip()  # inflates every member and checks its CRC
            if damaged is not None:
                raise book_error(filename, f"the EPUB is damaged: {damaged} fails its checksum")
            _check_package(archive, filename)
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError) as e:
            raise book_error(filename, f"the EPUB is damaged or truncated ({e})") from e


def _check_drm(archive: zipfile.ZipFile, names: set[str], filename: str) -> None:
    """Refuse a DRM-protected book: rights.xml, or encryption.xml encrypting more than obfuscated fonts."""
    drm = "the book is DRM-protected and cannot be read; export a DRM-free copy"
    if "META-INF/rights.xml" in names:
        raise book_error(filename, f"{drm} (META-INF/rights.xml)")
    if "META-INF/encryption.xml" not in names:
        return
    root = _xml(archive, "META-INF/encryption.xml", filename)
    algorithms = {method.get("Algorithm", "") for method in root.iter(f"{_XMLENC}EncryptionMethod")}
    if algorithms - FONT_OBFUSCATION:
        raise book_error(filename, f"{drm} (META-INF/encryption.xml uses {', '.join(sorted(algorithms))})")


def _check_package(archive: zipfile.ZipFile, filename: str) -> None:
    """container.xml, the package document it names and its NCX must be well-formed (ebooklib would guess)."""
    container = _xml(archive, "META-INF/container.xml", filename)
    rootfile = next(container.iter(f"{_CONTAINER}rootfile"), None)
    path = rootfile.get("full-path", "") if rootfile is not None else ""
    if not path:
        raise book_error(filename, "not a readable EPUB: META-INF/container.xml names no package document")
    package = _xml(archive, path, filename)
    for item in package.iter(f"{_OPF}item"):
        if item.get("media-type") == "application/x-dtbncx+xml" and item.get("href"):
            _xml(archive, posixpath.normpath(posixpath.join(posixpath.dirname(path), unquote(item.get("href", "")))),
                 filename)


def _xml(archive: zipfile.ZipFile, name: str, filename: str) -> etree._Element:
    try:
        content = archive.read(name)
    except KeyError as e:
        raise book_error(filename, f"not a readable EPUB: it has no {name}") from e
    try:
        return etree.fromstring(content, etree.XMLParser(resolve_entities=False, no_network=True))
    except etree.XMLSyntaxError as e:
        raise book_error(filename, f"not a readable EPUB: {name} is not well-formed XML ({e})") from e


def _metadata(book: epub.EpubBook, namespace: str, name: str) -> list[tuple[str | None, dict[str, str]]]:
    try:
        return list(book.get_metadata(namespace, name))
    except KeyError:  # no element of that namespace at all
        return []


def _dublin_core(book: epub.EpubBook, name: str) -> str:
    return next((clean(value) for value, _ in _metadata(book, "DC", name) if value and clean(value)), "")


def _author(book: epub.EpubBook) -> str | None:
    """The dc:creators, joined; those with a role other than author (an illustrator) only when there is no author."""
    creators = [(clean(value), next((v for k, v in attrs.items() if k.endswith("role")), "aut"))
                for value, attrs in _metadata(book, "DC", "creator") if value and clean(value)]
    authors = [name for name, role in creators if role == "aut"] or [name for name, _ in creators]
    return ", ".join(dict.fromkeys(authors)) or None


def _cover(book: epub.EpubBook) -> tuple[bytes | None, str | None]:
    """The cover image (EPUB3 cover-image, else EPUB2 <meta name="cover">) when it is a JPEG or a PNG."""
    candidates = list(book.get_items_of_type(ITEM_COVER))
    # ebooklib files <meta name="cover" content="id"/> under "meta" (or under "cover" when its namespace matches).
    metas = _metadata(book, "OPF", "meta") + _metadata(book, "OPF", "cover")
    for _, attrs in metas:
        if attrs.get("name") == "cover" and attrs.get("content"):
            candidates.append(book.get_item_with_id(attrs["content"]))
    for item in candidates:
        content = item.get_content() if item is not None else None
        if isinstance(content, bytes) and (kind := _image_type(content)):
            return content, kind
    return None, None


def _image_type(content: bytes) -> str | None:
    if content.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if content.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    return None


def _toc_titles(book: epub.EpubBook) -> dict[str, str]:
    """Each document's path (as the manifest names it) -> the title of the first TOC entry that points into it."""
    items = list(book.get_items())
    ncx = next((item for item in items if isinstance(item, epub.EpubNcx)), None)
    has_nav = any(isinstance(item, epub.EpubNav) for item in items)
    # ebooklib resolves nav hrefs against the package folder but leaves NCX ones relative to the NCX file.
    base = posixpath.dirname(ncx.file_name) if ncx is not None and not has_nav else ""
    titles: dict[str, str] = {}
    entries = list(book.toc)
    while entries:
        entry = entries.pop(0)
        if isinstance(entry, tuple):  # (Section, children)
            entries[:0] = [entry[0], *entry[1]]
            continue
        href, title = unquote(getattr(entry, "href", "") or "").split("#")[0], clean(getattr(entry, "title", "") or "")
        if href and title:
            titles.setdefault(posixpath.normpath(posixpath.join(base, href)), title)
    return titles


def _key(text: str) -> str:
    return "".join(ch for ch in text.casefold() if ch.isalnum())


def _chapter(content: bytes, toc_title: str) -> SourceChapter | None:
    """The document as a chapter titled from the TOC, else its first h1-h3; None for a table of contents."""
    found = html_text(content)
    title = toc_title or next((text for tag, text in found.blocks if tag in ("h1", "h2", "h3")), "")
    if _key(title) in _CONTENTS_TITLES or found.link_chars > MAX_LINK_SHARE * found.chars:
        return None
    blocks = list(found.blocks)
    first = next((i for i, (tag, _) in enumerate(blocks) if tag in HEADINGS), None)
    if first is not None and _key(title):
        # The chapter's own heading, maybe split over two ("Chapter 1" / "The Storm"), is the title: not read twice.
        if _key(blocks[first][1]) == _key(title):
            del blocks[first]
        elif first + 1 < len(blocks) and blocks[first + 1][0] in HEADINGS \
                and _key(blocks[first][1] + blocks[first + 1][1]) == _key(title):
            del blocks[first:first + 2]
    return SourceChapter(title, join_paragraphs([text for _, text in blocks]))
