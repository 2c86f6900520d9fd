"""File checksums, computed in bounded memory, and the check made right before a file is loaded."""

from __future__ import annotations

import hashlib
from pathlib import Path


def sha256_of(path: Path, chunk_bytes: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


class ChecksumMismatch(RuntimeError):
    """An exported file whose bytes are not the ones exported (corrupted or tampered with)."""


def verify(path: Path, expected_sha256: str) -> None:
    """Refuse a file whose sha256 is not the exported one (call this right before loading it)."""
    if not path.exists():
        raise ChecksumMismatch(f"{path.name}: the exported file is missing")
    actual = sha256_of(path)
    if actual != expected_sha256:
        raise ChecksumMismatch(f"{path.name}: sha256 {actual[:16]}... is not the exported {expected_sha256[:16]}... "
                               "(the file was corrupted or changed after export); it was not loaded")
