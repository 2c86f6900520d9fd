"""The full-archive path, against an HTTP server on 127.0.0.1 serving a zip built from the shared raw files."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import threading
import zipfile
from pathlib import Path

import pytest

from components.data.download import download, extract_zip
from components.data.errors import DataError
from components.stages import execute

MEMBERS = {  # the layout of the UCI archive "Activity recognition exp.zip"
    "Activity recognition exp/Phones_accelerometer.csv": "hhar/raw/Phones_accelerometer.csv.gz",
    "Activity recognition exp/Phones_gyroscope.csv": "hhar/raw/Phones_gyroscope.csv.gz",
    "Activity recognition exp/Watch_accelerometer.csv": "hhar/raw/Watch_accelerometer.csv.gz",
    "Activity recognition exp/Watch_gyroscope.csv": "hhar/raw/Watch_gyroscope.csv.gz",
}


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves one payload; honours `Range: bytes=N-`; can cut a response short to simulate a dropped link."""

    def do_GET(self):  # noqa: N802
        server = self.server
        server.requests.append(dict(self.headers))
        if server.missing:
            self.send_error(404)
            return
        data, start = server.payload, 0
        if "Range" in self.headers:
            start = int(self.headers["Range"].split("=")[1].split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if server.cut_after is not None:
            self.wfile.write(body[: server.cut_after])
            server.cut_after = None
            self.wfile.flush()
            self.connection.shutdown(2)
            return
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.payload, httpd.cut_after, httpd.requests, httpd.missing = b"", None, [], False
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def build_zip(path: Path, data_root: Path, extra: dict[str, bytes] | None = None) -> bytes:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for member, source in MEMBERS.items():
            zf.writestr(member, gzip.decompress((data_root / source).read_bytes()))
        for member, blob in (extra or {}).items():
            zf.writestr(member, blob)
    return path.read_bytes()


def url(server, name="Activity%20recognition%20exp.zip") -> str:
    return f"http://127.0.0.1:{server.server_address[1]}/{name}"


def test_interrupted_download_resumes_with_a_range_request(server, tmp_path, data_root):
    server.payload = build_zip(tmp_path / "a.zip", data_root)
    digest = hashlib.sha256(server.payload).hexdigest()
    server.cut_after = len(server.payload) // 3
    with pytest.raises(DataError, match="run again to resume"):
        download(url(server), digest, tmp_path / "dl")
    part = tmp_path / "dl" / "Activity recognition exp.zip.part"
    assert 0 < part.stat().st_size < len(server.payload)
    have = part.stat().st_size
    got = download(url(server), digest, tmp_path / "dl")
    assert server.requests[-1]["Range"] == f"bytes={have}-"
    assert got.read_bytes() == server.payload and not part.exists()
    download(url(server), digest, tmp_path / "dl")  # already there and verified: no new request
    assert len(server.requests) == 2


def test_wrong_checksum_is_refused_and_nothing_is_kept(server, tmp_path, data_root):
    server.payload = build_zip(tmp_path / "a.zip", data_root)
    with pytest.raises(DataError, match="checksum mismatch: expected sha256 0000"):
        download(url(server), "0" * 64, tmp_path / "dl")
    assert not list((tmp_path / "dl").iterdir())
    with pytest.raises(DataError, match="64-hex-digit"):
        download(url(server), "abc", tmp_path / "dl")


def test_http_error_is_reported(server, tmp_path):
    server.missing = True
    with pytest.raises(DataError, match=r"g\.zip: download failed: HTTP 404"):
        download(url(server, "g.zip"), "1" * 64, tmp_path / "dl")


@pytest.mark.parametrize("member", ["../escape.csv", "/abs/escape.csv", "Activity recognition exp/../../escape.csv"])
def test_zip_member_escaping_the_folder_is_refused_before_extracting_anything(tmp_path, data_root, member):
    archive = tmp_path / "evil.zip"
    build_zip(archive, data_root, extra={member: b"pwned"})
    target = tmp_path / "x" / "extracted"
    with pytest.raises(DataError, match=rf"evil\.zip, member '{member}': member path escapes"):
        extract_zip(archive, target)
    assert not target.exists() and not (tmp_path / "escape.csv").exists() and not (tmp_path / "x" / "escape.csv").exists()


def test_ingest_by_url_downloads_extracts_and_ingests(server, tmp_path, make_params, data_root):
    server.payload = build_zip(tmp_path / "a.zip", data_root)
    digest = hashlib.sha256(server.payload).hexdigest()
    params = make_params(
        "ingest.dataset=hhar_raw", "ingest.hhar_raw.intervals=4", "ingest.expectations.min_windows_per_class=0",
        "ingest.expectations.min_rows_per_class=1",
        f"ingest.download_url={url(server)}", f"ingest.download_sha256={digest}",
        "ingest.hhar_raw.accelerometer_files=['Activity recognition exp/Phones_accelerometer.csv', "
        "'Activity recognition exp/Watch_accelerometer.csv']",
        "ingest.hhar_raw.gyroscope_files=['Activity recognition exp/Phones_gyroscope.csv', "
        "'Activity recognition exp/Watch_gyroscope.csv']",
    )
    result = execute("ingest", params)
    assert result.windows > 0
    card = (result.output_dir / "data_card.json").read_text()
    assert "Activity recognition exp/Phones_accelerometer.csv" in card
    # a second run reuses the verified archive and its extraction
    execute("ingest", params)
    assert len(server.requests) == 1
