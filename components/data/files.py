"""Local corpus files at the byte level: names, opening (plain or gzip), UTF-8 checks, bounded lines.

Every reader in ``formats.py`` goes through here, so a binary file, bad UTF-8, a NUL byte,
a broken gzip stream or an unreadable file is refused the same way whatever the format:
one ValueError line naming the file, the line and the fix.
"""
from __future__ import annotations

import codecs
import gzip
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator

TEXT_SUFFIXES = (".txt", ".jsonl", ".json", ".csv")
# Longest first, so "a.jsonl.gz" is not taken for something shorter.
SUFFIXES = (*(s + ".gz" for s in TEXT_SUFFIXES), *TEXT_SUFFIXES, ".parquet")
SUFFIX_LIST = ".txt, .jsonl, .json, .csv (each optionally .gz), .parquet"
SNIFF_BYTES = 8192
# One line (or one whole .txt document) longer than this is refused rather than read into
# memory: no real document is 64 MiB, but a minified dump or a mislabelled binary can be.
MAX_LINE_BYTES = 64 * 2**20
BOM = codecs.BOM_UTF8
UTF8_FIX = "convert it to UTF-8 (e.g. iconv -f latin1 -t utf-8)"
BINARY_FIX = "binary data or UTF-16 text; give UTF-8 text files"


def file_format(path: Path) -> str | None:
    """The supported suffix `path` ends with (".jsonl.gz", ".txt", ...), or None."""
    name = path.name.lower()
    return next((s for s in SUFFIXES if name.endswith(s)), None)


def open_file(path: Path) -> BinaryIO:
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")


@contextmanager
def reading(path: Path) -> Iterator[None]:
    """Turns a broken gzip stream or an unreadable file into one line naming `path`."""
    try:
        yield
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise ValueError(f"{path}: not a valid gzip file ({e}); re-compress it or drop the .gz suffix") from None
    except OSError as e:
        raise ValueError(f"{path}: cannot read ({e.strerror or e}); check the file and its permissions") from None


def sniff(path: Path) -> None:
    """Refuse a binary file from its first bytes, before a line reader swallows a huge 'line'."""
    with open_file(path) as f:
        head = f.read(SNIFF_BYTES)
    nul = head.find(b"\0")
    if nul != -1:
        line = head.count(b"\n", 0, nul) + 1
        raise ValueError(f"{path}, line {line}: NUL byte at offset {nul}: {BINARY_FIX}")


def decode(raw: bytes, path: Path, line: int) -> str:
    """UTF-8 text of one line (or file, then `line` is 1); NUL bytes and bad UTF-8 are errors."""
    nul = raw.find(b"\0")
    if nul != -1:
        where = line + raw.count(b"\n", 0, nul)
        raise ValueError(f"{path}, line {where}: NUL byte: {BINARY_FIX}")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        where = line + raw.count(b"\n", 0, e.start)
        raise ValueError(f"{path}, line {where}: not UTF-8 (byte 0x{raw[e.start]:02x}); {UTF8_FIX}") from None


def too_long(path: Path, line: int, what: str) -> ValueError:
    return ValueError(f"{path}, line {line}: {what} longer than {MAX_LINE_BYTES // 2**20} MiB; "
                      "split it into documents (one JSON object per line, or txt_mode: paragraph)")


def lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, decoded line with its newline), a BOM dropped; a line over MAX_LINE_BYTES is refused."""
    with open_file(path) as f:
        lineno = 0
        while raw := f.readline(MAX_LINE_BYTES + 1):  # bounded: a huge line never fills memory
            lineno += 1
            if len(raw) > MAX_LINE_BYTES:
                raise too_long(path, lineno, "a line")
            if lineno == 1 and raw.startswith(BOM):
                raw = raw[len(BOM):]
            yield lineno, decode(raw, path, lineno)


def whole(path: Path) -> str:
    """The file as one decoded text (a BOM dropped), refused over MAX_LINE_BYTES."""
    with open_file(path) as f:
        raw = f.read(MAX_LINE_BYTES + 1)
    if len(raw) > MAX_LINE_BYTES:
        raise too_long(path, 1, "the document (txt_mode: file reads a file as one document) is")
    return decode(raw.removeprefix(BOM), path, 1)


class LineFeed:
    """A binary file handed out a line at a time (at most `size` bytes of a longer one),
    a BOM dropped, each chunk checked for NUL bytes and UTF-8 as it is read.

    Whatever a parser fed from `read` reports next comes from line `line`: this is how
    the JSON reader names the line of an item or an error without a parser of its own.
    """

    def __init__(self, f: BinaryIO, path: Path):
        self.f, self.path = f, path
        self.line, self._next = 1, 1
        self.blank = True  # nothing but whitespace so far
        self._buf, self._pos = b"", 0
        self._utf8 = codecs.getincrementaldecoder("utf-8")()
        if f.read(len(BOM)) != BOM:
            f.seek(0)

    def read(self, size: int = -1) -> bytes:
        if self._pos >= len(self._buf):
            if not size:
                return b""
            self._buf, self._pos = self.f.read(size), 0
            self._check(self._buf)
            if not self._buf:
                return b""
        end = self._buf.find(b"\n", self._pos) + 1 or len(self._buf)
        if 0 < size < end - self._pos:
            end = self._pos + size
        piece = self._buf[self._pos:end]
        self._pos = end
        self.line = self._next
        self._next += piece.endswith(b"\n")
        if self.blank and piece.strip():
            self.blank = False
        return piece

    def _check(self, chunk: bytes) -> None:
        """NUL bytes and bad UTF-8 in a chunk just read, named by their own line."""
        nul = chunk.find(b"\0")
        if nul != -1:
            raise ValueError(f"{self.path}, line {self._line_at(chunk, nul)}: NUL byte: {BINARY_FIX}")
        pending = len(self._utf8.getstate()[0])
        try:
            self._utf8.decode(chunk, final=not chunk)
        except UnicodeDecodeError as e:
            line = self._line_at(chunk, max(0, e.start - pending))
            raise ValueError(f"{self.path}, line {line}: not UTF-8; {UTF8_FIX}") from None

    def _line_at(self, chunk: bytes, offset: int) -> int:
        return self._next + chunk.count(b"\n", 0, offset)
