"""Jane Austen's six novels (public domain), as Debian's `r-cran-janeaustenr` ships them: the real English
that forgetting is measured on when it is installed.

The package stores each novel as an R character vector (one element per printed line) in an R lazy-load
database, `data/Rdata.rdb`: a sequence of entries, each a 4-byte big-endian length and a zlib stream of R's
XDR serialization. `scripts/setup.sh` extracts that one file from the Debian package into the virtual
environment (R itself is not needed); a system-wide install of the package is found too.

    entry         := uint32 length ‖ zlib(serialization)
    serialization := "X\\n" ‖ int version ‖ int writer ‖ int min-reader ‖ [version 3: int n ‖ n bytes encoding]
                     ‖ int flags (type 16: character vector) ‖ int length ‖ length × (int flags ‖ int n ‖ n bytes)
                     (n = −1: NA)
"""

from __future__ import annotations

import struct
import sys
import zlib
from pathlib import Path

LOCATIONS = (Path(sys.prefix) / "share" / "transferkit" / "janeaustenr" / "Rdata.rdb",
             Path("/usr/lib/R/site-library/janeaustenr/data/Rdata.rdb"))
STRSXP = 16


def austen_file() -> Path | None:
    """The novels' data file, if the package (or setup's extract of it) is present."""
    return next((path for path in LOCATIONS if path.is_file()), None)


def r_entries(data: bytes) -> list[bytes]:
    """The decompressed serializations of an R lazy-load database, in file order."""
    entries, pos = [], 0
    while pos < len(data):
        stream = zlib.decompressobj()
        entries.append(stream.decompress(data[pos + 4:]))
        pos = len(data) - len(stream.unused_data)
    return entries


def r_strings(serialization: bytes) -> list[str | None]:
    """A character vector from R's XDR serialization (version 2 or 3); None for NA."""
    def integer(at: int) -> int:
        return struct.unpack(">i", serialization[at: at + 4])[0]

    if serialization[:2] != b"X\n":
        raise ValueError("not R's XDR serialization")
    pos = 14 + (4 + integer(14) if integer(2) == 3 else 0)  # skip versions (and the native encoding, version 3)
    if integer(pos) & 0xFF != STRSXP:
        raise ValueError(f"not a character vector (R type {integer(pos) & 0xFF})")
    count, pos = integer(pos + 4), pos + 8
    strings: list[str | None] = []
    for _ in range(count):
        size, pos = integer(pos + 4), pos + 8
        strings.append(None if size == -1 else serialization[pos: pos + size].decode("utf-8"))
        pos += max(size, 0)
    return strings


def novels(path: Path) -> dict[str, list[str]]:
    """{title: paragraphs} of every novel in the data file. A paragraph joins the lines between blank lines;
    titles, bylines and chapter headings (paragraphs of fewer than 20 words) are left out."""
    books = {}
    for entry in r_entries(path.read_bytes()):
        lines = r_strings(entry)
        title = next(line for line in lines if line and line.strip()).strip().title()
        paragraphs, current = [], []
        for line in lines + [""]:
            if line and line.strip():
                current.append(line.strip())
            elif current:
                paragraphs.append(" ".join(current))
                current = []
        books[title] = [p for p in paragraphs if len(p.split()) >= 20]
    return books
