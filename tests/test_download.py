"""Dataset download against a local HTTP server on 127.0.0.1 (never any other address)."""

from __future__ import annotations

import hashlib
import io
import json
import socket
import stat
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from cellbench.data.download import MANIFEST, dataset_names, download_dataset, unpack_labelled
from cellbench.data.folders import LabelledFolder
from cellbench.errors import ConfigError, DownloadError
from cellbench.io import read_image, write_image

TIMEOUT = 5.0


def _images(tmp: Path) -> dict[str, bytes]:
    """A few tiny PNG/JPEG files, PBC-style folder names, as archive member name -> bytes."""
    rng = np.random.default_rng(0)
    out = {}
    for cls, ext in [("basophil", ".png"), ("neutrophil", ".jpg"), ("ig", ".png"), ("Lymphocytes", ".jpg")]:
        for i in range(2):
            f = tmp / f"{cls}_{i}{ext}"
            write_image(f, rng.integers(0, 256, (12, 10, 3), dtype=np.uint8))
            out[f"PBC_dataset_normal_DIB/{cls}/{cls[:2].upper()}_{i}{ext}"] = f.read_bytes()
    return out


def _zip(members: dict[str, bytes], extra: list[tuple[zipfile.ZipInfo, bytes]] = ()) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
        z.writestr("__MACOSX/PBC_dataset_normal_DIB/basophil/._BA_0.png", b"junk")
        z.writestr("PBC_dataset_normal_DIB/.DS_Store", b"junk")
        for info, data in extra:
            z.writestr(info, data)
    return buf.getvalue()


class _State:
    payload = b""
    support_range = True
    truncate_at: int | None = None     # close the connection after this many body bytes
    status = 200
    send_length = True                 # False: no Content-Length, the end of the body is the close
    requests: list[dict] = []


def _make_handler(state: type[_State]):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep test output clean
            pass

        def do_GET(self):  # noqa: N802 (http.server API)
            rng = self.headers.get("Range")
            state.requests.append({"path": self.path, "range": rng})
            if state.status != 200:
                self.send_error(state.status)
                return
            data = state.payload
            start = 0
            if rng and state.support_range:
                start = int(rng.split("=")[1].split("-")[0])
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            body = data[start:]
            if state.send_length:
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if state.truncate_at is not None:
                self.wfile.write(body[: state.truncate_at])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(body)

    return Handler


@pytest.fixture()
def server():
    state = type("State", (_State,), {"requests": []})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(state))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}/PBC_dataset_normal_DIB.zip"
    yield state
    httpd.shutdown()
    httpd.server_close()


def _expected_files(members: dict[str, bytes]) -> dict[str, bytes]:
    canon = {"basophil": "basophil", "neutrophil": "neutrophil", "ig": "ig", "Lymphocytes": "lymphocyte"}
    return {f"{canon[n.split('/')[1]]}/{n.split('/')[2]}": b for n, b in members.items()}


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*")
            if p.is_file() and not p.name.startswith(".")}


def test_registry_has_pbc():
    assert "pbc" in dataset_names()
    with pytest.raises(ConfigError, match="did you mean|Did you mean"):
        download_dataset("pcb", Path("/nonexistent-never-used"))


def test_full_download_and_unpack(server, tmp_path):
    members = _images(tmp_path)
    server.payload = _zip(members)
    digest = hashlib.sha256(server.payload).hexdigest()
    out = download_dataset("pbc", tmp_path / "pbc", url=server.url, sha256=digest, progress=False,
                           timeout=TIMEOUT)
    assert out == tmp_path / "pbc"
    assert _tree(out) == _expected_files(members)          # canonical classes, bytes unchanged
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["sha256"] == digest and manifest["sha256_verified"] is True
    assert manifest["bytes"] == len(server.payload)
    assert manifest["classes"] == {"basophil": 2, "ig": 2, "lymphocyte": 2, "neutrophil": 2}
    assert not (out / "PBC_dataset_normal_DIB.zip").exists()    # archive deleted after unpacking
    # The result is a labelled folder.
    folder = LabelledFolder(out)
    assert folder.classes() == ["basophil", "ig", "lymphocyte", "neutrophil"]
    assert read_image(out / "basophil" / "BA_0.png").shape == (12, 10, 3)
    # A second call is a no-op (manifest says complete): no new request.
    n = len(server.requests)
    download_dataset("pbc", out, url=server.url, progress=False, timeout=TIMEOUT)
    assert len(server.requests) == n


def test_without_checksum_records_computed_sha(server, tmp_path):
    server.payload = _zip(_images(tmp_path))
    out = download_dataset("mydata", tmp_path / "d", url=server.url, progress=False, timeout=TIMEOUT,
                           keep_archive=True)
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["sha256"] == hashlib.sha256(server.payload).hexdigest()
    assert manifest["sha256_verified"] is False
    assert (out / "PBC_dataset_normal_DIB.zip").read_bytes() == server.payload


def test_checksum_mismatch(server, tmp_path):
    server.payload = _zip(_images(tmp_path))
    with pytest.raises(DownloadError, match="SHA-256 mismatch"):
        download_dataset("pbc", tmp_path / "d", url=server.url, sha256="0" * 64, progress=False,
                         timeout=TIMEOUT)
    assert _tree(tmp_path / "d") == {}                 # nothing unpacked, bad archive deleted
    assert not (tmp_path / "d" / MANIFEST).exists()


def test_bad_sha_argument(tmp_path):
    with pytest.raises(DownloadError, match="64 hex"):
        download_dataset("pbc", tmp_path, url="http://127.0.0.1:9/x.zip", sha256="abc", progress=False)


def test_resume_with_range(server, tmp_path):
    members = _images(tmp_path)
    server.payload = _zip(members)
    out = tmp_path / "d"
    out.mkdir()
    k = len(server.payload) // 3
    (out / "PBC_dataset_normal_DIB.zip.part").write_bytes(server.payload[:k])
    download_dataset("pbc", out, url=server.url, sha256=hashlib.sha256(server.payload).hexdigest(),
                     progress=False, timeout=TIMEOUT)
    assert [r["range"] for r in server.requests] == [f"bytes={k}-"]   # only the rest was asked for
    assert _tree(out) == _expected_files(members)
    assert not (out / "PBC_dataset_normal_DIB.zip.part").exists()


def test_interrupted_then_resumed(server, tmp_path):
    members = _images(tmp_path)
    server.payload = _zip(members)
    digest = hashlib.sha256(server.payload).hexdigest()
    half = len(server.payload) // 2
    server.truncate_at = half
    out = tmp_path / "d"
    with pytest.raises(DownloadError, match="resume"):
        download_dataset("pbc", out, url=server.url, sha256=digest, progress=False, timeout=TIMEOUT)
    part = out / "PBC_dataset_normal_DIB.zip.part"
    assert part.read_bytes() == server.payload[:half]
    server.truncate_at = None
    download_dataset("pbc", out, url=server.url, sha256=digest, progress=False, timeout=TIMEOUT)
    assert server.requests[-1]["range"] == f"bytes={half}-"
    assert _tree(out) == _expected_files(members)


def test_part_already_complete_416(server, tmp_path):
    members = _images(tmp_path)
    server.payload = _zip(members)
    out = tmp_path / "d"
    out.mkdir()
    (out / "PBC_dataset_normal_DIB.zip.part").write_bytes(server.payload)
    download_dataset("pbc", out, url=server.url, progress=False, timeout=TIMEOUT)
    assert _tree(out) == _expected_files(members)


def test_server_without_range_restarts(server, tmp_path):
    members = _images(tmp_path)
    server.payload = _zip(members)
    server.support_range = False
    out = tmp_path / "d"
    out.mkdir()
    # A stale partial file with wrong bytes: appending to it would corrupt the archive.
    (out / "PBC_dataset_normal_DIB.zip.part").write_bytes(b"x" * 100)
    download_dataset("pbc", out, url=server.url, sha256=hashlib.sha256(server.payload).hexdigest(),
                     progress=False, timeout=TIMEOUT)
    assert server.requests[0]["range"] == "bytes=100-"
    assert _tree(out) == _expected_files(members)


def test_existing_archive_is_used_without_network(tmp_path):
    members = _images(tmp_path)
    out = tmp_path / "d"
    out.mkdir()
    (out / "PBC_dataset_normal_DIB.zip").write_bytes(_zip(members))
    # Port 9 on loopback is never contacted: the archive is already there.
    download_dataset("pbc", out, url="http://127.0.0.1:9/PBC_dataset_normal_DIB.zip", progress=False,
                     timeout=TIMEOUT)
    assert _tree(out) == _expected_files(members)


@pytest.mark.parametrize("bad", ["../evil.png", "/abs/basophil/evil.png", "a/../../basophil/evil.png"])
def test_path_traversal_refused(server, tmp_path, bad):
    members = _images(tmp_path)
    members[bad] = b"evil"
    server.payload = _zip(members)
    out = tmp_path / "inner" / "d"
    with pytest.raises(DownloadError, match="outside the target folder"):
        download_dataset("pbc", out, url=server.url, progress=False, timeout=TIMEOUT)
    assert _tree(out) == {}                                   # nothing written before the check
    assert not (tmp_path / "evil.png").exists() and not (tmp_path / "inner" / "evil.png").exists()


def test_zip_symlink_outside_refused(tmp_path):
    info = zipfile.ZipInfo("PBC_dataset_normal_DIB/basophil/link.png")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    archive = tmp_path / "a.zip"
    archive.write_bytes(_zip(_images(tmp_path), [(info, b"../../../../etc/passwd")]))
    with pytest.raises(DownloadError, match="points outside"):
        unpack_labelled(archive, tmp_path / "out", progress=False)


def test_tar_links(tmp_path):
    members = _images(tmp_path)

    def make(link_target: str) -> Path:
        path = tmp_path / f"a{abs(hash(link_target))}.tar.gz"
        with tarfile.open(path, "w:gz") as t:
            for name, data in members.items():
                ti = tarfile.TarInfo(name)
                ti.size = len(data)
                t.addfile(ti, io.BytesIO(data))
            ti = tarfile.TarInfo("PBC_dataset_normal_DIB/basophil/link.png")
            ti.type = tarfile.SYMTYPE
            ti.linkname = link_target
            t.addfile(ti)
        return path

    with pytest.raises(DownloadError, match="points outside"):
        unpack_labelled(make("/etc/passwd"), tmp_path / "o1", progress=False)
    with pytest.raises(DownloadError, match="points outside"):
        unpack_labelled(make("../../../x"), tmp_path / "o2", progress=False)
    # A link that stays inside is skipped, the rest unpacked.
    counts = unpack_labelled(make("BA_0.png"), tmp_path / "o3", progress=False)
    assert counts == {"basophil": 2, "neutrophil": 2, "ig": 2, "lymphocyte": 2}
    assert _tree(tmp_path / "o3") == _expected_files(members)
    assert not (tmp_path / "o3" / "basophil" / "link.png").exists()


def test_nested_archive(tmp_path):
    """Mendeley's "download all" zip holds the dataset zip: unpacked one level down."""
    members = _images(tmp_path)
    outer = io.BytesIO()
    with zipfile.ZipFile(outer, "w") as z:
        z.writestr("PBC_dataset_normal_DIB.zip", _zip(members))
    archive = tmp_path / "snkd93bnjr-1.zip"
    archive.write_bytes(outer.getvalue())
    unpack_labelled(archive, tmp_path / "o", progress=False)
    assert _tree(tmp_path / "o") == _expected_files(members)


def test_not_an_archive(server, tmp_path):
    server.payload = b"<html>login page</html>"
    with pytest.raises(DownloadError, match="not a zip or tar"):
        download_dataset("pbc", tmp_path / "d", url=server.url, progress=False, timeout=TIMEOUT)


def test_http_error(server, tmp_path):
    server.status = 404
    with pytest.raises(DownloadError, match=r"HTTP 404.*by hand"):
        download_dataset("pbc", tmp_path / "d", url=server.url, progress=False, timeout=TIMEOUT)


def test_unreachable_port(tmp_path):
    with socket.socket() as s:          # a free loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/PBC_dataset_normal_DIB.zip"
    with pytest.raises(DownloadError) as info:
        download_dataset("pbc", tmp_path / "d", url=url, progress=False, timeout=TIMEOUT)
    msg = str(info.value)
    assert "cannot connect" in msg and url in msg
    assert str(tmp_path / "d" / "PBC_dataset_normal_DIB.zip") in msg      # where to put a manual download


def test_dns_failure(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", offline)      # simulated offline: nothing is contacted
    with pytest.raises(DownloadError, match="could not be resolved.*by hand"):
        download_dataset("pbc", tmp_path / "d", progress=False, timeout=TIMEOUT)


def test_timeout(tmp_path):
    with socket.socket() as s:          # accepts connections (backlog) but never answers
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        url = f"http://127.0.0.1:{s.getsockname()[1]}/x.zip"
        with pytest.raises(DownloadError, match="no answer within 0.5 s|timed out"):
            download_dataset("pbc", tmp_path / "d", url=url, progress=False, timeout=0.5)


# -- broken archives are refused cleanly and deleted (issue #13, items 7 and 8) --------------------


def test_no_content_length_truncated_is_not_taken_as_complete(server, tmp_path):
    members = _images(tmp_path)
    server.payload = _zip(members)
    server.send_length = False
    server.truncate_at = len(server.payload) * 2 // 3  # the connection drops: looks like a normal end
    out = tmp_path / "d"
    with pytest.raises(DownloadError, match="sent no size .*not a complete archive.*deleted"):
        download_dataset("pbc", out, url=server.url, progress=False, timeout=TIMEOUT)
    assert [p.name for p in out.iterdir()] == []  # neither the .part nor an archive is kept for reuse
    server.truncate_at = None  # the rerun downloads afresh and succeeds
    download_dataset("pbc", out, url=server.url, progress=False, timeout=TIMEOUT)
    assert _tree(out) == _expected_files(members)
    assert json.loads((out / MANIFEST).read_text())["sha256"] == hashlib.sha256(server.payload).hexdigest()


def _tar_gz(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _corrupt_zip_member(members: dict[str, bytes]) -> bytes:
    """A zip whose directory is intact but one member's stored bytes are flipped (bad CRC)."""
    data = bytearray(_zip(members))
    name = next(iter(members)).encode()
    at = data.index(name) + len(name) + 10  # inside the first member's data, after its local header
    data[at:at + 8] = bytes(b ^ 0xFF for b in data[at:at + 8])
    return bytes(data)


@pytest.mark.parametrize("kind", ["truncated_tar_gz", "corrupt_zip_member"])
def test_broken_archive_by_hand_is_refused_and_deleted(tmp_path, kind):
    members = _images(tmp_path)
    out = tmp_path / "d"
    out.mkdir()
    if kind == "truncated_tar_gz":
        payload = _tar_gz(members)
        payload = payload[: len(payload) * 2 // 3]
    else:
        payload = _corrupt_zip_member(members)
    archive = out / "PBC_dataset_normal_DIB.zip"
    archive.write_bytes(payload)
    # direct unpacking raises DownloadError, never EOFError / BadZipFile
    with pytest.raises(DownloadError, match="corrupt"):
        unpack_labelled(archive, tmp_path / "direct", progress=False)
    with pytest.raises(DownloadError, match=r"corrupt.*deleted"):
        download_dataset("pbc", out, url="http://127.0.0.1:9/PBC_dataset_normal_DIB.zip", progress=False,
                         timeout=TIMEOUT)
    assert not archive.exists()  # a rerun downloads afresh instead of failing on it again
    assert not (out / MANIFEST).exists()


def test_cli_broken_archive_is_one_line(tmp_path, capsys):
    from cellbench.cli import main

    out = tmp_path / "d"
    out.mkdir()
    (out / "PBC_dataset_normal_DIB.zip").write_bytes(_corrupt_zip_member(_images(tmp_path)))
    assert main(["data", "download", "pbc", "--to", str(out), "--url",
                 "http://127.0.0.1:9/PBC_dataset_normal_DIB.zip", "-q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cellbench: error:") and err.count("\n") == 1 and "Traceback" not in err


def test_unpack_keeps_same_named_files_and_counts_them(tmp_path):
    rng = np.random.default_rng(1)

    def png() -> bytes:
        f = tmp_path / "t.png"
        write_image(f, rng.integers(0, 256, (6, 6, 3), dtype=np.uint8))
        return f.read_bytes()

    members = {"PBC/neutrophil/x.png": png(), "PBC/SNE/x.png": png(), "other/SNE/x.png": png(),
               "PBC/neutrophil/y.png": png(), "PBC/neutrophil/y.jpg": png(), "PBC/basophil/x.png": png()}
    archive = tmp_path / "a.zip"
    archive.write_bytes(_zip(members))
    counts = unpack_labelled(archive, tmp_path / "o", progress=False)
    files = {str(p.relative_to(tmp_path / "o")): p.read_bytes() for p in (tmp_path / "o").rglob("*.*")}
    assert counts == {"neutrophil": 5, "basophil": 1} and len(files) == 6
    assert sorted(files.values()) == sorted(members.values())  # every image kept, none overwritten
    stems = [Path(n).stem for n in files if n.startswith("neutrophil/")]
    assert len(set(stems)) == 5  # ids (file stems) stay unique within a class
    assert len(LabelledFolder(tmp_path / "o").items) == 6
