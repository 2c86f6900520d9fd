"""Reading plain numeric text files (one row per sample, values separated by one delimiter) fast,
and saying exactly which line is wrong when one is.

The fast path is pyarrow's CSV reader with every column typed as a float; it
refuses a bad file without telling which line is at fault, so only then is the
file read again line by line to find the first bad line and say what is wrong
with it (too few or too many values, a value that is not a number).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from components.data.errors import DataError


def read_numeric(path: Path, columns: int, delimiter: str = " ", what: str = "values") -> np.ndarray:
    """float64 [rows, columns] from a headerless text file; DataError naming the line on bad input."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    if not path.exists():
        raise DataError(path, "file not found")
    names = [f"c{i}" for i in range(columns)]
    try:
        table = pacsv.read_csv(
            path,
            read_options=pacsv.ReadOptions(column_names=names, block_size=1 << 22),
            parse_options=pacsv.ParseOptions(delimiter=delimiter),
            convert_options=pacsv.ConvertOptions(column_types={n: pa.float64() for n in names},
                                                 strings_can_be_null=False, quoted_strings_can_be_null=False),
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        if "Empty CSV file" in str(exc):
            raise DataError(path, f"the file is empty (expected rows of {columns} {what})") from None
        raise locate_bad_line(path, columns, delimiter, what) or DataError(path, f"unreadable: {exc}") from None
    if table.num_rows == 0:
        raise DataError(path, "the file holds no rows")
    values = np.column_stack([table.column(n).to_numpy(zero_copy_only=False) for n in names])
    missing = np.flatnonzero(np.isnan(values).any(axis=1))
    if len(missing):  # pyarrow reads an empty field as null (NaN); a sensor row has no empty value
        raise DataError(path, f"a value is missing (expected {columns} {what})", f"line {missing[0] + 1}")
    return values


def locate_bad_line(path: Path, columns: int, delimiter: str, what: str) -> DataError | None:
    """The first line that does not hold `columns` numbers, as a DataError; None if every line does.

    `utf-8-sig`: a leading byte-order mark is legal (pyarrow skips it too) and no part of the first value.
    """
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        for number, line in enumerate(f, start=1):
            text = line.rstrip("\r\n")
            fields = text.split(delimiter)
            if len(fields) != columns:
                return DataError(path, f"expected {columns} {what} separated by {delimiter!r}, got "
                                 f"{len(fields)}: {text[:80]!r}", f"line {number}")
            for field in fields:
                try:
                    float(field)
                except ValueError:
                    return DataError(path, f"{field[:40]!r} is not a number", f"line {number}")
    return None
