"""Streaming reader for the HHAR raw UCI CSV files.

The published files (Stisen et al., SenSys 2015) have the columns
`Index,Arrival_Time,Creation_Time,x,y,z,User,Model,Device,gt`; the full
Phones_accelerometer.csv is ~1.3 GB (~13 M rows), so it is read in blocks of
bounded size with pyarrow's streaming CSV reader, never as a whole.

Quirks handled here rather than downstream:
- `.csv.gz` or plain `.csv`; a tab-separated file under a `.csv` name (the
  header line decides the delimiter);
- `Creation_Time` written in spreadsheet E-notation (`1.42469663191325E+018`):
  parsed as float64 nanoseconds, which is all the precision such a file has;
- the literal label `null` stays a string (it is a class, not a missing value);
- a UTF-8 byte-order mark in front of the header (a spreadsheet's "CSV UTF-8"):
  legal, read as UTF-8 (`utf-8-sig`), never taken as part of the first name.

Every block carries the file line numbers of its rows, and every error names
the file and the line.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv

from components.data.errors import DataError

COLUMNS = ("Index", "Arrival_Time", "Creation_Time", "x", "y", "z", "User", "Model", "Device", "gt")
_TYPES = {
    "Index": pa.int64(),
    "Arrival_Time": pa.int64(),
    "Creation_Time": pa.float64(),
    "x": pa.float64(),
    "y": pa.float64(),
    "z": pa.float64(),
    **{c: pa.dictionary(pa.int32(), pa.string()) for c in ("User", "Model", "Device", "gt")},
}
_CONVERSION = re.compile(r"In CSV column #(\d+): .*invalid value '(.*)'")


class _HashingReader(io.RawIOBase):
    """A read-only file that feeds every byte it hands out to a sha256."""

    def __init__(self, raw: io.BufferedReader):
        self._raw = raw
        self.sha256 = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = self._raw.readinto(buffer)
        if n:
            self.sha256.update(memoryview(buffer)[:n])
        return n

    def close(self) -> None:
        self._raw.close()
        super().close()


@dataclass
class CsvInfo:
    """What was learnt about a file while reading it."""

    path: Path
    delimiter: str = ","
    rows: int = 0
    sha256: str = ""
    notes: list[str] = field(default_factory=list)


def _open_text(path: Path) -> io.TextIOBase:
    """The file as text; `utf-8-sig` drops a leading byte-order mark (the header line is the only one it can lead)."""
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8-sig", errors="replace")
    return open(path, encoding="utf-8-sig", errors="replace")


def read_header(path: Path) -> tuple[str, list[str]]:
    """Return (delimiter, column names); fail clearly on an empty or foreign file."""
    try:
        with _open_text(path) as f:
            line = f.readline()
    except (OSError, EOFError) as exc:
        raise DataError(path, f"cannot read the file: {exc}") from None
    if not line.strip():
        raise DataError(path, "the file is empty (no header line)")
    delimiter = "\t" if line.count("\t") > line.count(",") else ","
    names = [c.strip().strip('"') for c in line.rstrip("\r\n").split(delimiter)]
    missing = [c for c in COLUMNS if c not in names]
    if missing:
        raise DataError(
            path,
            f"missing column(s) {', '.join(missing)}; the header has {', '.join(names)} "
            f"(expected the UCI HHAR layout {','.join(COLUMNS)})",
            "line 1",
        )
    return delimiter, names


def iter_blocks(path: Path, block_bytes: int, info: CsvInfo | None = None) -> Iterator[pd.DataFrame]:
    """Yield the file's rows as DataFrames of about `block_bytes` of text each.

    Each frame's index is the file line number of the row (the header is line
    1). `info`, if given, is filled with the delimiter, the row count, notes
    and, once the file is exhausted, the sha256 of the file's bytes.

    The text is cut into blocks here and each block is parsed on its own:
    pyarrow's streaming reader reads ahead in the background and, on a file of
    a few hundred MB, ends up holding most of it in memory.
    """
    path = Path(path)
    info = info if info is not None else CsvInfo(path)
    info.path = path
    info.delimiter, names = read_header(path)
    if info.delimiter == "\t":
        info.notes.append("tab-separated despite its name; read with a tab delimiter")
    hashing = _HashingReader(open(path, "rb", buffering=0))
    line = 1
    try:
        stream = gzip.GzipFile(fileobj=hashing, mode="rb") if path.suffix == ".gz" else io.BufferedReader(hashing, 1 << 20)
        stream.readline()  # the header, already parsed
        for text in _text_blocks(stream, block_bytes):
            frame = _parse_block(path, text, names, info.delimiter, line)
            frame.index = pd.RangeIndex(line + 1, line + 1 + len(frame), name="line")
            line += len(frame)
            info.rows += len(frame)
            if info.rows == len(frame) and len(frame) and _looks_e_notation(path, info.delimiter):
                info.notes.append("Creation_Time in E-notation (15 significant digits): precision about +-5 us")
            yield frame
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(path, f"cannot read past this point ({exc}); is the file truncated?", f"line {line + 1}") from None
    finally:
        hashing.close()
    if info.rows == 0:
        raise DataError(path, "the file has a header but no data rows")
    info.sha256 = hashing.sha256.hexdigest()


def _text_blocks(stream, block_bytes: int) -> Iterator[bytes]:
    """Blocks of whole lines of about `block_bytes` each."""
    rest = b""
    while data := stream.read(block_bytes):
        buffer = rest + data
        cut = buffer.rfind(b"\n") + 1
        if cut == 0:
            rest = buffer
            continue
        rest = buffer[cut:]
        yield buffer[:cut]
    if rest.strip():
        yield rest + b"\n"


def _parse_block(path: Path, text: bytes, names: list[str], delimiter: str, line: int) -> pd.DataFrame:
    bad_rows: list[pacsv.InvalidRow] = []

    def on_invalid(row: pacsv.InvalidRow) -> str:
        bad_rows.append(row)
        return "error"

    try:
        table = pacsv.read_csv(
            pa.BufferReader(text),
            read_options=pacsv.ReadOptions(column_names=names, block_size=len(text) + 1, use_threads=False),
            parse_options=pacsv.ParseOptions(delimiter=delimiter, invalid_row_handler=on_invalid),
            convert_options=pacsv.ConvertOptions(
                column_types={c: _TYPES[c] for c in COLUMNS},
                include_columns=list(COLUMNS),
                null_values=[""],
                strings_can_be_null=False,
            ),
        )
    except pa.ArrowInvalid as exc:
        raise _explain(path, str(exc), bad_rows, line, delimiter, names) from None
    return table.to_pandas()


def _looks_e_notation(path: Path, delimiter: str) -> bool:
    with _open_text(path) as f:
        f.readline()
        first = f.readline().split(delimiter)
    return len(first) > 2 and "E+" in first[2].upper()


def _explain(path: Path, message: str, bad_rows: list, line: int, delimiter: str, names: list[str]) -> DataError:
    """Turn a pyarrow parse or conversion error into one naming the row."""
    if bad_rows:
        row = bad_rows[0]
        where = f"line {line + row.number}" if row.number > 0 else f"after line {line}"
        return DataError(path, f"expected {row.expected_columns} fields, got {row.actual_columns}: {row.text!r}", where)
    if "Empty CSV file" in message:
        return DataError(path, "the file is empty")
    match = _CONVERSION.search(message)
    if match:
        column, value = names[int(match.group(1))], match.group(2)
        found = _find_value(path, delimiter, int(match.group(1)), value, line)
        where = f"line {found}" if found else f"after line {line}"
        return DataError(path, f"column {column}: {value!r} is not a number", where)
    return DataError(path, f"cannot parse: {message}", f"after line {line}")


def _find_value(path: Path, delimiter: str, column: int, value: str, start_line: int) -> int | None:
    """Line number of the first row at or after `start_line` whose `column` equals `value`."""
    with _open_text(path) as f:
        for number, text in enumerate(f, start=1):
            if number <= start_line:
                continue
            fields = text.rstrip("\r\n").split(delimiter)
            if len(fields) > column and fields[column] == value:
                return number
    return None
