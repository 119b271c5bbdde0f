"""Read rows from jsonl / json / csv / parquet / txt files and saved HF datasets.

Every row keeps where it came from (`Row.source`, `Row.line`) so later
validation errors can name the file and line. Nothing is dropped silently:
unreadable input raises `DataError`; the only rows skipped are blank lines of
a .jsonl or .txt file, which hold no data.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Iterator
from typing import Any

from ..errors import DataError

SUFFIXES = (".jsonl", ".json", ".csv", ".parquet", ".txt")


@dataclass(frozen=True)
class Row:
    source: str   # file path (or dataset folder)
    line: int     # 1-based line (jsonl, txt, csv incl. header) or row number (json, parquet, datasets)
    fields: dict[str, Any]


def _read_text(path: Path) -> str:
    raw = path.read_bytes()
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise DataError(str(path), "is UTF-16 text (byte-order mark); save it as UTF-8", 1)
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]  # a UTF-8 byte-order mark is harmless; strip it
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(str(path), f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start})", line) from None


def _parse_json(text: str, path: Path, line: int | None = None) -> Any:
    """json.loads with every failure as a DataError: syntax (JSONDecodeError), numbers
    too long to convert (ValueError), nesting too deep (RecursionError)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        where = line if line is not None else exc.lineno
        raise DataError(str(path), f"malformed JSON: {exc.msg} (column {exc.colno})", where) from None
    except (ValueError, RecursionError) as exc:
        raise DataError(str(path), f"malformed JSON: {str(exc).splitlines()[0] or type(exc).__name__}", line) from None


def _rows_until_error(rows: Iterator[Row]) -> list[Row]:
    """Every row; a row that cannot be read raises its DataError carrying the rows read before it
    (`rows_before`), so the caller can report an earlier row's problem first: errors come in file order."""
    read: list[Row] = []
    try:
        for row in rows:
            read.append(row)
    except DataError as exc:
        exc.rows_before = read
        raise
    return read


def _read_jsonl(path: Path) -> list[Row]:
    return _rows_until_error(_jsonl_rows(path))


def _jsonl_rows(path: Path) -> Iterator[Row]:
    for number, text in enumerate(_read_text(path).splitlines(), start=1):
        if not text.strip():
            continue
        obj = _parse_json(text, path, number)
        if not isinstance(obj, dict):
            raise DataError(str(path), f"each line must be a JSON object, got {type(obj).__name__}", number)
        yield Row(str(path), number, obj)


def _read_json(path: Path) -> list[Row]:
    obj = _parse_json(_read_text(path), path)
    if isinstance(obj, dict) and len(obj) == 1 and isinstance(next(iter(obj.values())), list):
        obj = next(iter(obj.values()))  # {"data": [...]} style
    if not isinstance(obj, list):
        raise DataError(str(path), "a .json data file must hold a list of objects")
    rows = []
    for index, item in enumerate(obj, start=1):
        if not isinstance(item, dict):
            raise DataError(str(path), f"row {index} must be a JSON object, got {type(item).__name__}", index)
        rows.append(Row(str(path), index, item))
    return rows


def _read_csv(path: Path) -> list[Row]:
    reader = csv.DictReader(_read_text(path).splitlines(keepends=True))
    return _rows_until_error(_csv_rows(reader, path))


def _csv_rows(reader: csv.DictReader, path: Path) -> Iterator[Row]:
    try:
        if not reader.fieldnames:
            raise DataError(str(path), "empty CSV file (no header)")
        for record in reader:
            line = reader.line_num
            if None in record:
                raise DataError(str(path), f"more values than header columns ({len(reader.fieldnames)})", line)
            missing = [k for k, v in record.items() if v is None]
            if missing:
                raise DataError(str(path), "fewer values than header columns", line, missing[0])
            yield Row(str(path), line, dict(record))
    except csv.Error as exc:  # NUL bytes, a field over the size limit
        raise DataError(str(path), f"malformed CSV: {exc}", max(reader.line_num, 1)) from None


def _read_parquet(path: Path) -> list[Row]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for corrupt files
        raise DataError(str(path), f"unreadable parquet file ({exc})") from None
    return [Row(str(path), i, rec) for i, rec in enumerate(table.to_pylist(), start=1)]


def _read_txt(path: Path) -> list[Row]:
    return [Row(str(path), n, {"text": t}) for n, t in enumerate(_read_text(path).splitlines(), start=1) if t.strip()]


def _read_hf_dataset(path: Path, split: str | None) -> list[Row]:
    from datasets import DatasetDict, load_from_disk

    try:
        ds = load_from_disk(str(path))
    except Exception as exc:
        raise DataError(str(path), f"not a saved Hugging Face dataset ({exc})") from None
    if isinstance(ds, DatasetDict):
        if split not in ds:
            raise DataError(str(path), f"dataset has splits {list(ds)}; no split named '{split}'")
        ds = ds[split]
    return [Row(str(path), i, rec) for i, rec in enumerate(ds, start=1)]


def read_rows(path: str | Path, split: str | None = None) -> list[Row]:
    """All rows of one data source. `split` picks a split of a saved DatasetDict."""
    path = Path(path)
    if not path.exists():
        raise DataError(str(path), "no such file or folder")
    if path.is_dir():
        if (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file():
            rows = _read_hf_dataset(path, split)
        else:
            raise DataError(str(path), "is a folder, but not a saved Hugging Face dataset; give a data file")
    else:
        readers = {".jsonl": _read_jsonl, ".json": _read_json, ".csv": _read_csv, ".parquet": _read_parquet, ".txt": _read_txt}
        reader = readers.get(path.suffix.lower())
        if reader is None:
            raise DataError(str(path), f"unsupported file type '{path.suffix}'; use one of {', '.join(SUFFIXES)}")
        try:
            rows = reader(path)
        except PermissionError:
            raise DataError(str(path), "permission denied") from None
    if not rows:
        raise DataError(str(path), "no data rows")
    return rows
