"""Download public blood-cell datasets into the labelled-folder layout ``ROOT/<class>/<file>``.

Only the standard library talks to the network (:mod:`urllib`); nothing else in cellbench does.

Steps of :func:`download_dataset`:

1. Stream the archive to ``DIR/<file>.part`` with a progress bar (tqdm). An interrupted download
   is resumed by an HTTP ``Range`` request from the size of the ``.part`` file; a server that
   ignores ``Range`` (answers ``200`` with the whole file) is handled by starting over.
2. Rename ``.part`` to ``DIR/<file>`` once the byte count matches ``Content-Length``; without a
   ``Content-Length`` only once every member of the archive decompresses (else it is deleted).
3. Compute the archive's SHA-256 and compare it with the expected value (the registry's, or the
   one the user passes, ``--sha256``). A mismatch deletes the archive and raises
   :class:`~cellbench.errors.DownloadError`.
4. Without a known checksum, decompress every member once first: a truncated or corrupt archive
   is deleted before the error, so a rerun downloads it afresh instead of failing on it again.
   Unpack (zip, tar, tar.gz/bz2/xz, and one level of archives nested in the archive) into
   ``DIR/<canonical class>/<file name>``. Every entry is checked first: absolute paths, ``..``
   components and links that point outside the archive are refused (nothing is written then);
   links inside it, hidden files and ``__MACOSX`` entries are skipped. Two images that would get
   the same id in one class (``a/x.png`` and ``b/x.png``, or ``x.png`` and ``x.jpg``) are both kept
   (the second as ``b_x.png``).
5. Write ``DIR/.cellbench-download.json`` (URL, size, computed SHA-256, whether it was verified
   against a known value, images per class) and delete the archive (``keep_archive=False``).

A user who cannot reach the server can download the file with a browser, put it at
``DIR/<file>`` and run the same command: an existing complete archive is not downloaded again.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import json
import logging
import lzma
import os
import re
import shutil
import socket
import stat
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from .. import __version__
from ..errors import DatasetError, DownloadError
from ..fs import atomic_path, atomic_write
from ..io import is_image_file
from ..registry import Registry
from .classes import canonical_class

log = logging.getLogger(__name__)

MANIFEST = ".cellbench-download.json"
CHUNK = 1 << 16
#: Largest single archive member that is unpacked (guards against zip bombs).
MAX_MEMBER_BYTES = 512 * 1024 * 1024


@dataclass(frozen=True)
class DatasetSource:
    """Where a public dataset lives and what it is.

    ``sha256`` / ``size`` are ``None`` when the publisher gives no checksum; the computed value
    is then recorded in the manifest instead of verified.
    """

    name: str
    url: str
    filename: str
    landing_page: str = ""
    sha256: str | None = None
    size: int | None = None
    description: str = ""
    citation: str = ""
    license: str = ""


DATASETS: Registry[DatasetSource] = Registry("dataset")

DATASETS.add(
    "pbc",
    DatasetSource(
        name="pbc",
        # The file link of PBC_dataset_normal_DIB.zip on the dataset's Mendeley Data page (it
        # redirects to the storage host). Mendeley publishes no checksum on the page.
        url=("https://data.mendeley.com/public-files/datasets/snkd93bnjr/files/"
             "2fc38728-2ae7-4a62-a857-032af82334c3/file_downloaded"),
        filename="PBC_dataset_normal_DIB.zip",
        landing_page="https://data.mendeley.com/datasets/snkd93bnjr/1",
        description="PBC: 17,092 peripheral blood cell images (CellaVision DM96, 8 classes, 360x363 JPEG)",
        citation=("Acevedo A, Merino A, Alferez S, Molina A, Boldu L, Rodellar J. A dataset of microscopic "
                  "peripheral blood cell images for development of automatic recognition systems. "
                  "Data in Brief 30:105474, 2020. Mendeley Data, doi:10.17632/snkd93bnjr.1"),
        license="CC BY 4.0",
    ),
    "PBC (Acevedo et al. 2020): 17,092 DM96 images, 8 classes, CC BY 4.0",
)


def dataset_names() -> list[str]:
    """Keys accepted by :func:`download_dataset` (``cellbench data download NAME``)."""
    return DATASETS.names()


# --------------------------------------------------------------------------------------------
# download


def _manual_hint(src: DatasetSource, to: Path) -> str:
    page = f" (or from {src.landing_page})" if src.landing_page else ""
    return (f"To download by hand, fetch {src.url}{page} with a browser, save it as {to / src.filename} "
            f"and run the command again (it verifies and unpacks an existing archive); or unpack it "
            f"yourself so that the images lie in {to}/<class>/<file>.")


def _request(url: str, start: int) -> urllib.request.Request:
    headers = {"User-Agent": f"cellbench/{__version__} (python-urllib)", "Accept-Encoding": "identity"}
    if start > 0:
        headers["Range"] = f"bytes={start}-"
    return urllib.request.Request(url, headers=headers)


_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")


def _fetch(url: str, part: Path, *, timeout: float, progress: bool, label: str) -> tuple[int, bool]:
    """Stream ``url`` into ``part`` (resuming from its size); returns the final size in bytes and
    whether the server stated the total size (``Content-Length``/``Content-Range``) and it was met.

    Raises the low-level ``urllib``/``http.client``/``OSError`` exceptions; the caller wraps them.
    """
    start = part.stat().st_size if part.exists() else 0
    try:
        resp = urllib.request.urlopen(_request(url, start), timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and start > 0:
            # Range not satisfiable: either the .part is already complete or it is bogus.
            m = re.match(r"bytes\s+\*/(\d+)", exc.headers.get("Content-Range", "") or "")
            exc.close()
            if m and int(m.group(1)) == start:
                log.info("%s: %s is already complete", label, part)
                return start, True
            log.info("%s: server refused to resume from byte %d; starting over", label, start)
            part.unlink()
            return _fetch(url, part, timeout=timeout, progress=progress, label=label)
        raise
    with resp:
        status = resp.status
        if start > 0 and status == 206:
            m = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
            if not m or int(m.group(1)) != start:
                raise DownloadError(
                    f"{url}: server answered the resume request from byte {start} with "
                    f"Content-Range {resp.headers.get('Content-Range')!r}; delete {part} and run again"
                )
            total = int(m.group(3)) if m.group(3) != "*" else None
            mode = "ab"
            log.info("%s: resuming at byte %d", label, start)
        else:
            if start > 0:
                log.info("%s: server ignores Range requests; downloading from the start", label)
            start = 0
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            mode = "wb"
        done = start
        with open(part, mode) as fh, tqdm(total=total, initial=start, unit="B", unit_scale=True,
                                          unit_divisor=1024, desc=label, disable=not progress,
                                          leave=False) as bar:
            while True:
                chunk = resp.read(CHUNK)
                if not chunk:
                    break
                fh.write(chunk)
                done += len(chunk)
                bar.update(len(chunk))
    if total is not None and done != total:
        raise DownloadError(
            f"{url}: download interrupted at {done} of {total} bytes; run the command again to resume "
            f"(the partial file {part} is kept)"
        )
    return done, total is not None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _download(src: DatasetSource, to: Path, *, timeout: float, progress: bool) -> Path:
    archive = to / src.filename
    if archive.is_file():
        log.info("%s: using the existing archive %s (delete it to download again)", src.name, archive)
        return archive
    part = archive.with_name(archive.name + ".part")
    what = f"downloading {src.name} from {src.url}"
    try:
        _, sized = _fetch(src.url, part, timeout=timeout, progress=progress, label=src.filename)
    except DownloadError:
        raise
    except urllib.error.HTTPError as exc:
        raise DownloadError(f"{what} failed: HTTP {exc.code} {exc.reason}. {_manual_hint(src, to)}") from None
    except urllib.error.URLError as exc:
        reason = exc.reason
        kind = ("host name could not be resolved (offline or DNS failure)"
                if isinstance(reason, socket.gaierror) else f"cannot connect ({reason})")
        raise DownloadError(f"{what} failed: {kind}. {_manual_hint(src, to)}") from None
    except TimeoutError as exc:
        raise DownloadError(f"{what} failed: no answer within {timeout:g} s ({exc}); run again to resume. "
                            f"{_manual_hint(src, to)}") from None
    except (http.client.HTTPException, OSError) as exc:
        got = part.stat().st_size if part.exists() else 0
        raise DownloadError(f"{what} was interrupted after {got} bytes ({type(exc).__name__}: {exc}); run "
                            f"the command again to resume (the partial file {part} is kept). "
                            f"{_manual_hint(src, to)}") from None
    if not sized:
        # no Content-Length: a dropped connection looks like the end of the file, so the archive
        # is accepted only once every member decompresses; a broken one is deleted, not reused
        try:
            with _Archive(part) as arc:
                arc.verify()
        except DownloadError as exc:
            part.unlink(missing_ok=True)
            raise DownloadError(f"{src.url}: the server sent no size and the file received is not a complete "
                                f"archive ({exc}); it was deleted: run the command again") from None
    os.replace(part, archive)
    return archive


# --------------------------------------------------------------------------------------------
# safe unpacking


@dataclass(frozen=True)
class _Entry:
    name: str              # path inside the archive (POSIX)
    kind: str              # "file", "dir", "link", "other"
    size: int
    link_target: str = ""


def _check_path(name: str, archive: Path) -> PurePosixPath:
    """Refuse archive paths that would land outside the target folder."""
    norm = name.replace("\\", "/")
    p = PurePosixPath(norm)
    if p.is_absolute() or re.match(r"^[A-Za-z]:", norm) or ".." in p.parts:
        raise DownloadError(
            f"{archive}: entry {name!r} would be written outside the target folder (absolute path or '..'); "
            "the archive is unsafe and was not unpacked"
        )
    return p


def _check_link(entry: _Entry, archive: Path) -> None:
    target = entry.link_target.replace("\\", "/")
    base = PurePosixPath(entry.name).parent
    if PurePosixPath(target).is_absolute() or re.match(r"^[A-Za-z]:", target):
        escapes = True
    else:
        depth = 0
        escapes = False
        for part in (base / target).parts:
            if part == "..":
                depth -= 1
                if depth < 0:
                    escapes = True
                    break
            elif part not in (".", ""):
                depth += 1
    if escapes:
        raise DownloadError(
            f"{archive}: link {entry.name!r} -> {entry.link_target!r} points outside the target folder; "
            "the archive is unsafe and was not unpacked"
        )


def _skipped(p: PurePosixPath) -> bool:
    return any(part == "__MACOSX" or part.startswith(".") for part in p.parts)


#: What reading a truncated or corrupt archive raises (zip CRC/structure, tar headers, the gzip,
#: bzip2 and xz streams); a full disk or a permission error is an OSError and is not among them.
_CORRUPT = (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, gzip.BadGzipFile)


class _Archive:
    """Uniform read access to zip and tar archives."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._zip: zipfile.ZipFile | None = None
        self._tar: tarfile.TarFile | None = None
        try:
            if zipfile.is_zipfile(path):
                self._zip = zipfile.ZipFile(path)
            elif tarfile.is_tarfile(path):
                self._tar = tarfile.open(path, "r:*")
            else:
                raise DownloadError(f"{path}: not a zip or tar archive; delete it and download again")
        except (*_CORRUPT, OSError) as exc:
            raise DownloadError(f"{path}: corrupt archive ({exc}); delete it and download again") from None

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()
        if self._tar is not None:
            self._tar.close()

    def __enter__(self) -> _Archive:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def entries(self) -> list[_Entry]:
        try:
            return self._entries()
        except _CORRUPT as exc:
            raise DownloadError(f"{self.path}: corrupt or truncated archive ({type(exc).__name__}: {exc}); "
                                "delete it and download again") from None

    def verify(self) -> None:
        """Decompress every member once (CRCs for zip, the whole stream for tar): a truncated or
        corrupt archive raises :class:`DownloadError` here, before anything is unpacked."""
        try:
            if self._zip is not None:
                bad = self._zip.testzip()
                if bad is not None:
                    raise zipfile.BadZipFile(f"bad CRC in {bad!r}")
            else:
                assert self._tar is not None
                for m in self._tar.getmembers():
                    if m.isfile():
                        f = self._tar.extractfile(m)
                        if f is not None:
                            with f:
                                while f.read(CHUNK):
                                    pass
        except _CORRUPT as exc:
            raise DownloadError(f"{self.path}: corrupt or truncated archive ({type(exc).__name__}: {exc}); "
                                "delete it and download again") from None

    def _entries(self) -> list[_Entry]:
        out: list[_Entry] = []
        if self._zip is not None:
            for info in self._zip.infolist():
                mode = info.external_attr >> 16
                if stat.S_ISLNK(mode):
                    target = self._zip.read(info).decode("utf-8", "replace")
                    out.append(_Entry(info.filename, "link", 0, target))
                elif info.is_dir():
                    out.append(_Entry(info.filename, "dir", 0))
                else:
                    out.append(_Entry(info.filename, "file", info.file_size))
        else:
            assert self._tar is not None
            for m in self._tar.getmembers():
                if m.issym() or m.islnk():
                    out.append(_Entry(m.name, "link", 0, m.linkname))
                elif m.isdir():
                    out.append(_Entry(m.name, "dir", 0))
                elif m.isfile():
                    out.append(_Entry(m.name, "file", m.size))
                else:
                    out.append(_Entry(m.name, "other", 0))
        return out

    def copy_to(self, name: str, dest: Path) -> None:
        if self._zip is not None:
            src = self._zip.open(name)
        else:
            assert self._tar is not None
            f = self._tar.extractfile(name)
            if f is None:
                raise DownloadError(f"{self.path}: cannot read entry {name!r}")
            src = f
        try:
            with atomic_path(dest) as tmp, src, open(tmp, "wb") as out:
                shutil.copyfileobj(src, out, CHUNK)
        except _CORRUPT as exc:
            raise DownloadError(f"{self.path}: entry {name!r} is corrupt or truncated ({type(exc).__name__}: "
                                f"{exc}); delete the archive and download again") from None


def _class_of(p: PurePosixPath) -> str | None:
    """The canonical class of the innermost folder of ``p`` that names one, else ``None``."""
    for part in reversed(p.parts[:-1]):
        try:
            return canonical_class(part)
        except DatasetError:
            continue
    return None


def _is_archive_name(name: str) -> bool:
    n = name.lower()
    return n.endswith((".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz"))


def _unique_dest(to: Path, cls: str, p: PurePosixPath, used: set[tuple[str, str]]) -> Path:
    """``to/cls/<name>``, renamed (``<folder>_<name>``, then ``<folder>_<stem>_<k><ext>``) when an image
    of that class already took the id (file stem): two files never share a path or an id."""
    stem, suffix = PurePosixPath(p.name).stem, PurePosixPath(p.name).suffix
    parent = p.parent.name or "root"
    candidates = [stem, f"{parent}_{stem}"] + [f"{parent}_{stem}_{k}" for k in range(2, 10_000)]
    for cand in candidates:
        if (cls, cand) not in used:
            used.add((cls, cand))
            return to / cls / f"{cand}{suffix}"
    raise DownloadError(f"too many images named {p.name!r} in class {cls!r}")


def unpack_labelled(archive: Path, to: Path, *, progress: bool = True, _depth: int = 0,
                    _used: set[tuple[str, str]] | None = None) -> Counter:
    """Unpack ``archive`` (zip or tar) into ``to/<canonical class>/<file name>``.

    Image files are placed by the innermost folder of their archive path that names a known cell
    class (:func:`~cellbench.data.classes.canonical_class`); images under no class folder are
    skipped with a warning. When the archive holds no images but other archives (Mendeley's
    "download all" zip wraps the dataset zip), those are unpacked in turn.

    Returns
    -------
    collections.Counter
        Images written per class.

    Raises
    ------
    DownloadError
        When an entry would escape ``to`` (absolute path, ``..``, link pointing outside; checked
        for every entry before anything is written), a member exceeds ``MAX_MEMBER_BYTES``, or the
        archive is corrupt or holds no images in class folders.
    """
    to = Path(to)
    to.mkdir(parents=True, exist_ok=True)
    used: set[tuple[str, str]] = set() if _used is None else _used  # (class, id) written so far
    with _Archive(archive) as arc:
        entries = arc.entries()
        files: list[tuple[_Entry, PurePosixPath]] = []
        for e in entries:
            p = _check_path(e.name, archive)
            if e.kind == "link":
                _check_link(e, archive)
                log.warning("%s: skipping link %s", archive, e.name)
            elif e.kind == "other":
                log.warning("%s: skipping special entry %s", archive, e.name)
            elif e.kind == "file" and not _skipped(p):
                if e.size > MAX_MEMBER_BYTES:
                    raise DownloadError(f"{archive}: entry {e.name!r} is {e.size} bytes uncompressed "
                                        f"(limit {MAX_MEMBER_BYTES}); refusing to unpack it")
                files.append((e, p))
        images = [(e, p) for e, p in files if is_image_file(p.name)]
        if not images and _depth == 0:
            inner = [(e, p) for e, p in files if _is_archive_name(p.name)]
            if inner:
                counts: Counter = Counter()
                for e, p in inner:
                    with tempfile.TemporaryDirectory(dir=to, prefix=".cellbench-inner-") as tmp:
                        nested = Path(tmp) / p.name
                        arc.copy_to(e.name, nested)
                        counts += unpack_labelled(nested, to, progress=progress, _depth=1, _used=used)
                return counts
        counts = Counter()
        unlabelled = 0
        for e, p in tqdm(images, desc=f"unpacking {archive.name}", unit="file", disable=not progress,
                         leave=False):
            cls = _class_of(p)
            if cls is None:
                unlabelled += 1
                continue
            # the same file name in two folders mapping to one class (or a.png beside a.jpg) gets a
            # new name instead of overwriting the first: every image is kept and counted once
            dest = _unique_dest(to, cls, p, used)
            arc.copy_to(e.name, dest)
            counts[cls] += 1
        if unlabelled:
            log.warning("%s: %d image(s) lie under no folder named after a cell class; skipped",
                        archive, unlabelled)
    if not counts:
        raise DownloadError(f"{archive}: no images in class folders (<class>/<file>) found; "
                            "is this the right archive?")
    return counts


# --------------------------------------------------------------------------------------------
# entry point


def download_dataset(name: str, to: str | os.PathLike, *, url: str | None = None, sha256: str | None = None,
                     progress: bool = True, timeout: float = 30, keep_archive: bool = False,
                     force: bool = False) -> Path:
    """Download a public dataset and unpack it into the labelled-folder layout ``to/<class>/<file>``.

    Parameters
    ----------
    name:
        Registry key (:func:`dataset_names`, e.g. ``"pbc"``). With ``url`` given, any name may be
        used (the archive is then saved as the URL's last path component).
    to:
        Target folder (created). It becomes a labelled folder usable with
        :class:`~cellbench.data.folders.LabelledFolder` and ``--data cross:x=...,y=DIR``.
    url:
        Download from this URL instead of the registry's (a mirror, or a local file server).
    sha256:
        Expected SHA-256 (hex) of the archive; overrides the registry's. Without any expected
        value the computed one is only recorded in ``to/.cellbench-download.json``.
    progress:
        Show tqdm progress bars (download and unpacking).
    timeout:
        Seconds to wait for the server to connect or send data before giving up (per socket
        operation, not for the whole download).
    keep_archive:
        Keep ``to/<archive>`` after unpacking (deleted by default).
    force:
        Download and unpack again even when the manifest says it was done.

    Returns
    -------
    pathlib.Path
        ``to``.

    Raises
    ------
    DownloadError
        Offline / DNS failure / refused connection / timeout / HTTP error (the message names the
        URL and how to download by hand), interrupted transfer (run again to resume), checksum
        mismatch (the archive is deleted), or an unsafe or corrupt archive.
    ConfigError
        For an unknown ``name`` without ``url``.
    """
    to = Path(to)
    if name in DATASETS:
        src = DATASETS.get(name)
    elif url is not None:
        src = DatasetSource(name=name, url=url, filename="archive")
    else:
        src = DATASETS.get(name)  # raises ConfigError with "did you mean"
    if url is not None:
        tail = PurePosixPath(urllib.request.urlparse(url).path).name
        filename = tail if _is_archive_name(tail) else src.filename
        src = DatasetSource(name=src.name, url=url, filename=filename, landing_page=src.landing_page,
                            sha256=src.sha256 if url == src.url else None, description=src.description,
                            citation=src.citation, license=src.license)
    expected = (sha256 or src.sha256 or "").strip().lower() or None
    if expected is not None and not re.fullmatch(r"[0-9a-f]{64}", expected):
        raise DownloadError(f"--sha256 {sha256!r} is not a SHA-256 hex digest (64 hex digits)")
    try:
        to.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DownloadError(f"{to}: cannot create the target folder ({exc})") from None
    manifest_path = to / MANIFEST
    if manifest_path.is_file() and not force:
        try:
            prev = json.loads(manifest_path.read_text())
        except (OSError, ValueError):
            prev = {}
        if prev.get("complete") and prev.get("name") == src.name and (
                expected is None or prev.get("sha256") == expected):
            log.info("%s: already downloaded into %s (see %s; force=True to redo)", src.name, to, MANIFEST)
            return to

    archive = _download(src, to, timeout=timeout, progress=progress)
    digest = _sha256(archive)
    size = archive.stat().st_size
    if expected is not None and digest != expected:
        archive.unlink()
        raise DownloadError(
            f"{archive}: SHA-256 mismatch: expected {expected}, got {digest} ({size} bytes). The file was "
            "deleted; run the command again to download it afresh, or check the --sha256 value"
        )
    if src.size is not None and size != src.size and url is None:
        log.warning("%s: %d bytes, the registry says %d", archive, size, src.size)
    if expected is None:
        log.info("%s: no published checksum; computed SHA-256 %s is recorded in %s",
                 archive, digest, MANIFEST)
    try:
        if expected is None:  # nothing vouches for the bytes: decompress everything before unpacking
            with _Archive(archive) as arc:
                arc.verify()
        counts = unpack_labelled(archive, to, progress=progress)
    except DownloadError as exc:
        # An unsafe, corrupt or wrong archive does not get better by retrying the unpacking.
        archive.unlink(missing_ok=True)
        text = str(exc).removesuffix("; delete it and download again")
        raise DownloadError(f"{text}; the archive was deleted: run the command again to download it afresh") \
            from None
    manifest = {
        "name": src.name,
        "url": src.url,
        "landing_page": src.landing_page,
        "archive": src.filename,
        "bytes": size,
        "sha256": digest,
        "sha256_verified": expected is not None,
        "classes": dict(sorted(counts.items())),
        "images": sum(counts.values()),
        "license": src.license,
        "citation": src.citation,
        "downloaded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cellbench_version": __version__,
        "complete": True,
    }
    atomic_write(manifest_path, json.dumps(manifest, indent=2) + "\n")
    if not keep_archive:
        archive.unlink()
    log.info("%s: %d images in %d classes unpacked into %s", src.name, manifest["images"], len(counts), to)
    return to
