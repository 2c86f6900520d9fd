"""Fetch a data archive by URL: resumable, checksum-checked, safely extracted.

A partial download is kept as `<name>.part` and resumed with an HTTP Range
request; the file is only renamed to its final name once its sha256 matches.
Extraction refuses any member whose path would land outside the target folder
(`../`, absolute paths, symlinks), and is all-or-nothing.
"""

from __future__ import annotations

import http.client
import logging
import stat
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath

from components.artifacts.atomic import atomic_directory
from components.artifacts.seals import sha256_of
from components.data.errors import DataError

log = logging.getLogger(__name__)
_CHUNK = 1 << 20


def download(url: str, sha256: str, directory: Path, timeout_s: float = 60.0) -> Path:
    """Download `url` into `directory` (resuming a partial file); return the verified file."""
    if not sha256 or len(sha256) != 64:
        raise DataError(url, "ingest.download_sha256 must be the 64-hex-digit sha256 of the archive")
    name = Path(urllib.parse.unquote(urllib.parse.urlparse(url).path)).name or "download"
    directory.mkdir(parents=True, exist_ok=True)
    final, part = directory / name, directory / f"{name}.part"
    if final.exists() and sha256_of(final) == sha256.lower():
        log.info("%s already downloaded and verified", final)
        return final
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            resumed = have and response.status == 206
            if have and not resumed:
                log.info("server ignored the Range request; downloading %s from the start", name)
            total = response.headers.get("Content-Length")
            log.info("downloading %s (%s bytes%s)", url, total or "?", f", resuming at {have}" if resumed else "")
            received = 0
            with open(part, "ab" if resumed else "wb") as f:
                while chunk := response.read(_CHUNK):
                    f.write(chunk)
                    received += len(chunk)
            if total is not None and received < int(total):
                raise OSError(f"connection closed after {received} of {total} bytes")
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # the part file is already complete
            pass
        else:
            raise DataError(url, f"download failed: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        raise DataError(url, f"download interrupted ({exc}); run again to resume from {part}") from None
    actual = sha256_of(part)
    if actual != sha256.lower():
        part.unlink()
        raise DataError(url, f"checksum mismatch: expected sha256 {sha256.lower()}, got {actual}; the partial file was removed")
    part.replace(final)
    return final


def extract_zip(archive: Path, target: Path) -> Path:
    """Extract `archive` into `target` after checking every member; return `target`."""
    try:
        zf = zipfile.ZipFile(archive)
    except zipfile.BadZipFile as exc:
        raise DataError(archive, f"not a zip archive: {exc}") from None
    with zf:
        for info in zf.infolist():
            _check_member(archive, info)
        with atomic_directory(target) as staging:
            for info in zf.infolist():
                zf.extract(info, staging)
    return target


def _check_member(archive: Path, info: zipfile.ZipInfo) -> None:
    name = info.filename.replace("\\", "/")
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or (path.parts and ":" in path.parts[0]):
        raise DataError(archive, "member path escapes the extraction folder; nothing was extracted", f"member {info.filename!r}")
    if stat.S_ISLNK(info.external_attr >> 16):
        raise DataError(archive, "member is a symbolic link; nothing was extracted", f"member {info.filename!r}")
