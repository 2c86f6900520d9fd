"""File checksums, computed in bounded memory, the check made right before a file is loaded, and the error a
damaged artifact raises."""

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


class DamagedArtifact(ValueError):
    """A file the pipeline wrote that cannot be read back (truncated, half copied, from another tool).

    The message names the file, what is wrong with it and which stage writes it again.
    """

    def __init__(self, path: Path, problem: str, remedy: str):
        super().__init__(f"{path}: {problem}; {remedy}")
        self.path = Path(path)


def verify(path: Path, expected_sha256: str) -> None:
    """Refuse a file whose sha256 is not the exported one (call this right before loading it)."""
    if not path.exists():
        raise ChecksumMismatch(f"{path.name}: the exported file is missing")
    actual = sha256_of(path)
    if actual != expected_sha256:
        raise ChecksumMismatch(f"{path.name}: sha256 {actual[:16]}... is not the exported {expected_sha256[:16]}... "
                               "(the file was corrupted or changed after export); it was not loaded")


# ---- sealed output folders: each stage records what it wrote, each consumer checks what it reads ----------------

SEAL_FILE = "checksums.json"
SEAL_FORMAT = "iot-compress/checksums/1"


def seal(folder: Path, names: list[str] | None = None) -> Path:
    """Record the sha256 of the files in `folder` (`names`, relative paths; default: every file below it but
    hidden ones) in `folder/checksums.json`. Paths are relative, so a copied folder checks its own bytes."""
    import json

    folder = Path(folder)
    if names is None:
        names = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                       if p.is_file() and p.name != SEAL_FILE
                       and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    files = {name: {"sha256": sha256_of(folder / name), "bytes": (folder / name).stat().st_size} for name in names}
    target = folder / SEAL_FILE
    tmp = target.with_name(f".{SEAL_FILE}.tmp")
    tmp.write_text(json.dumps({"format": SEAL_FORMAT, "files": files}, indent=1, sort_keys=True))
    tmp.replace(target)
    return target


def verify_sealed(folder: Path, names: list[str], remedy: str) -> None:
    """Refuse to read `names` (relative paths) from `folder` unless each is the file its stage sealed there.

    Raises DamagedArtifact naming the file: no seal (not written by this pipeline's stage, or by a version
    before seals), a file the seal does not list, a missing file, or bytes that changed since."""
    import json

    folder = Path(folder)
    seal_path = folder / SEAL_FILE
    try:
        recorded = json.loads(seal_path.read_text())
        if recorded.get("format") != SEAL_FORMAT:
            raise ValueError(f"format {recorded.get('format')!r}, expected {SEAL_FORMAT!r}")
        files = recorded["files"]
    except FileNotFoundError:
        raise DamagedArtifact(seal_path, "missing: the folder was not written by this pipeline's stage (or by a "
                              "version before outputs were sealed), so its files cannot be trusted", remedy) from None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DamagedArtifact(seal_path, f"not a readable seal ({exc})", remedy) from None
    for name in names:
        path = folder / name
        if name not in files:
            raise DamagedArtifact(path, f"not listed in {SEAL_FILE} beside it", remedy)
        if not path.is_file():
            raise DamagedArtifact(path, "missing", remedy)
        actual = sha256_of(path)
        if actual != files[name]["sha256"]:
            raise DamagedArtifact(path, f"sha256 {actual[:16]}... is not the {files[name]['sha256'][:16]}... its "
                                  f"stage recorded in {SEAL_FILE} (changed or damaged since it was written)", remedy)
