"""Writing files so that a crash never leaves a half-written one, and the JSON-lines format.

    write_file_atomic(path, write)    write(tmp) fills a temporary file beside `path`; fsync; rename onto `path`
    write_text_atomic(path, text)     the same for a string
    write_dir_atomic(target, write)   write(tmp) fills a temporary folder beside `target`; every file fsynced;
                                      renamed onto `target` (an old `target` is moved aside first, then removed)
    append_jsonl(path, row)           one JSON object per line, appended and flushed
    jsonl_text(rows)                  the text of a whole .jsonl file
    cache_root()                      the one folder transferkit writes outside a run directory

A rename within one folder is atomic on POSIX, so a reader (or a resumed run) sees either the old complete
file or the new complete one.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Callable, Iterable


def cache_root() -> Path:
    """$TRANSFERKIT_CACHE, else $XDG_CACHE_HOME/transferkit, else ~/.cache/transferkit: converted models and
    the plotting library's font cache live here."""
    root = os.environ.get("TRANSFERKIT_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "transferkit"
    return Path(root)


def fsync_file(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file_atomic(path: Path, write: Callable[[Path], object]) -> None:
    """`write(tmp)` fills a temporary file beside `path`, which then replaces `path` in one step; if `write`
    fails, the temporary file is removed and `path` is untouched."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        fsync_file(tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def write_text_atomic(path: Path, text: str) -> None:
    write_file_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_dir_atomic(target: Path, write: Callable[[Path], object]) -> None:
    """Call write(tmp_dir), fsync its files, then rename tmp_dir to `target`."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".tmp-{target.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    write(tmp)
    for f in tmp.rglob("*"):
        if f.is_file():
            fsync_file(f)
    fsync_dir(tmp)
    if target.exists():
        old = target.parent / f".old-{target.name}-{os.getpid()}"
        os.rename(target, old)
        os.rename(tmp, target)
        shutil.rmtree(old)
    else:
        os.rename(tmp, target)
    fsync_dir(target.parent)


def jsonl_text(rows: Iterable[dict]) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


def append_jsonl(path: Path, row: dict) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(row) + "\n")
        fh.flush()
