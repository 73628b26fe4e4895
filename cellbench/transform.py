"""Apply a saved normalizer to every image of a folder tree (``cellbench transform``).

Safety rules:

* No output may land on an input, nor anywhere inside the input tree (it would be read as an
  input by the next run): input ``tin/a`` with output ``tin`` maps ``tin/a/a/x.png`` onto the
  input ``tin/a/x.png`` and is refused before anything is written.
* The output folder carries the fingerprint of the model that wrote it, in
  ``OUT/.cellbench-transform.json`` (method, SHA-256 of the options, SHA-256 of
  ``state.safetensors``). A second run of the same model resumes (finished outputs are skipped);
  another model, or outputs of unknown origin, are refused unless ``overwrite`` (which redoes
  every image and records the new model).
* Every output is written atomically (a temporary name renamed into place): a killed run leaves
  no partial image, only hidden ``.NAME.XXXX.tmp`` files that the next run removes. One run at a
  time writes into a folder (``OUT/.cellbench.lock``).

At scale: files stream through a DataLoader with decoding workers and a bounded prefetch
(memory does not grow with the folder), and ``torchrun --nproc_per_node=N -m cellbench
transform ...`` deals the sorted file list out by rank (:func:`shard`); see ``docs/scale.md``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sys
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .data.stream import ImageFiles, file_loader, fix_mmap_threshold, group_by_size
from .errors import ConfigError
from .io import is_image_file, write_image
from .methods import load_normalizer
from .methods.base import STATE_FILE, read_meta
from .tensors import to_uint8
from .train.distributed import DistInfo

log = logging.getLogger(__name__)

MANIFEST = ".cellbench-transform.json"


@dataclass
class TransformSummary:
    """What a run did: images ``written``, ``existing`` outputs skipped, ``failed`` (path, reason)
    inputs, wall ``seconds``, and the number of ``ranks`` that shared the work."""

    written: int = 0
    existing: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    ranks: int = 1


def _inputs(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and is_image_file(p) and not p.name.startswith("."))


def model_fingerprint(model_dir: str | os.PathLike) -> dict:
    """``{method, params_sha256, state_sha256}`` of a model folder written by ``cellbench fit``."""
    from .fs import sha256_file

    d = Path(model_dir)
    meta = read_meta(d)
    params = json.dumps(meta.get("params", {}), sort_keys=True, default=str)
    state = d / STATE_FILE
    return {"method": meta["method"], "params_sha256": hashlib.sha256(params.encode()).hexdigest(),
            "state_sha256": sha256_file(state) if state.exists() else None}


def _check_paths(src: Path, dst: Path, files: list[Path]) -> list[tuple[Path, Path]]:
    """``(input, output)`` pairs; refuses any output that is an input or lies inside the input tree."""
    if dst == src or src in dst.parents:
        raise ConfigError(f"{dst}: the output folder must not be the input folder or inside it; "
                          "choose an output folder outside the input tree")
    inputs = {f.resolve() for f in files}
    pairs = []
    for f in files:
        out = dst / f.relative_to(src)
        real = out.resolve()
        if real in inputs or out in inputs or src in real.parents:
            raise ConfigError(f"{dst}: the output of {f} would be {out}, inside the input folder {src} "
                              f"{'(an input image)' if real in inputs else ''}; choose an output folder outside "
                              "the input tree")
        pairs.append((f, out))
    return pairs


def _check_manifest(dst: Path, fingerprint: dict, todo: list[tuple[Path, Path]], overwrite: bool) -> None:
    path = dst / MANIFEST
    if overwrite:
        return
    if path.exists():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
            old = {k: old.get(k) for k in fingerprint}
        except (OSError, ValueError, AttributeError) as exc:
            raise ConfigError(f"{path}: unreadable ({exc}); pass --overwrite to redo the folder") from None
        if old != fingerprint:
            differ = [k for k in fingerprint if old.get(k) != fingerprint[k]]
            raise ConfigError(f"{dst}: holds outputs of another model ({', '.join(differ)} differ: "
                              f"{old.get('method')!r} vs {fingerprint['method']!r}); use another output folder "
                              "or pass --overwrite to redo every image with this model")
        return
    made = next((out for _, out in todo if out.exists()), None)
    if made is not None:
        raise ConfigError(f"{dst}: {made} exists but the folder has no {MANIFEST} naming the model that wrote it; "
                          "use another output folder or pass --overwrite")


def _stale_temporaries(dst: Path) -> list[Path]:
    """Temporary files :func:`cellbench.fs.atomic_path` leaves when a run is killed (``.NAME.XXXX.tmp``)."""
    found = []
    for dirpath, _dirs, names in os.walk(dst):
        for n in names:
            if n.startswith(".") and n.endswith(".tmp") and is_image_file(n[1:].rsplit(".", 2)[0]):
                found.append(Path(dirpath) / n)
    return found


def shard(pairs: list, rank: int, world: int, block: int) -> list:
    """Rank ``rank``'s part of ``pairs``: blocks of ``block`` consecutive items dealt out in turn.

    Dealing whole batches keeps the batches of a sharded run those of a one-process run (a
    normalizer whose arithmetic depends on the batch still gives identical bytes), and every item
    belongs to exactly one rank.
    """
    return [p for k in range(rank * block, len(pairs), world * block) for p in pairs[k : k + block]]


def _agree_on_rank0(info, fn) -> None:
    """Run ``fn`` on rank 0; an error it raises is raised on every rank (the others get a
    :class:`ConfigError` quoting it), so no rank waits for a rank that has stopped."""
    err: Exception | None = None
    if info.is_main:
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - re-raised below, after the other ranks heard of it
            err = exc
    if info.enabled:
        import torch.distributed as dist

        box = [None if err is None else (type(err).__name__, str(err))]
        dist.broadcast_object_list(box, src=0)
        if err is None and box[0] is not None:
            raise ConfigError(f"rank 0 refused the run: {box[0][1]}")
    if err is not None:
        raise err


def transform_folder(model_dir: str | os.PathLike, input_dir: str | os.PathLike, output_dir: str | os.PathLike,
                     *, batch_size: int = 16, device: str = "cpu", overwrite: bool = False,
                     progress: bool = True, engine: str = "eager", workers: int | None = None,
                     prefetch: int = 2, writers: int = 1, dist_info: DistInfo | None = None) -> TransformSummary:
    """Transform every image under ``input_dir`` into ``output_dir`` (same relative names).

    Streaming: the sorted file list is read by a DataLoader (``workers`` decoding processes,
    ``None``: :func:`cellbench.data.stream.default_workers`; each at most ``prefetch`` batches
    ahead), transformed ``batch_size`` files at a time (a batch's images of one size together)
    and written by ``writers`` threads, each output atomically (a temporary file renamed into
    place), so memory stays bounded by the batches in flight whatever the folder holds and a
    killed run leaves no partial output (only hidden ``.NAME.XXXX.tmp`` files, removed by the next
    run). Outputs of the same model that already exist are skipped unless ``overwrite`` (so an
    interrupted run resumes); see the module docstring for the rules that keep inputs safe and
    outputs tied to their model. Unreadable inputs are reported and skipped. A progress bar
    goes to stderr (``progress``).

    ``dist_info`` (:func:`cellbench.train.distributed.setup_distributed` under ``torchrun``):
    the file list is dealt out by rank (:func:`shard`); rank 0 checks and writes the manifest
    before any rank writes an image, holds the output folder's lock, and after a barrier returns
    the summary of all ranks (the other ranks return their own).
    """
    from .fs import FolderLock, atomic_write

    info = dist_info or DistInfo()
    t0 = time.perf_counter()
    src, dst = Path(input_dir).resolve(), Path(output_dir).resolve()
    if not src.is_dir():
        raise ConfigError(f"{src}: input folder not found")
    if dst.exists() and not dst.is_dir():
        raise ConfigError(f"{dst}: is an existing file; the output must be a folder")
    if batch_size < 1:
        raise ConfigError("--batch-size must be at least 1")
    if writers < 1:
        raise ConfigError("--writers must be at least 1")
    files = _inputs(src)
    if not files:
        raise ConfigError(f"{src}: no PNG/JPEG/BMP/TIFF images found")
    pairs = _check_paths(src, dst, files)
    fingerprint = model_fingerprint(model_dir)
    # the model is read (and checked) before anything is written
    norm = load_normalizer(model_dir).to(device)
    if engine != "eager":  # ccgan/pcnet on the CPU: cellbench.nets.engines (folded, onnxruntime, bf16, ...)
        from .nets.engines import with_engine

        norm = with_engine(norm, engine)
    lock = FolderLock(dst, what="transform output folder") if info.is_main else None

    def prepare() -> None:
        _check_manifest(dst, fingerprint, pairs, overwrite)
        assert lock is not None  # rank 0
        lock.acquire()
        for tmp in _stale_temporaries(dst):  # left by a killed run; the lock says none is being written
            with contextlib.suppress(OSError):
                tmp.unlink()
        # the fingerprint goes first, so even an interrupted run's outputs are tied to their model
        atomic_write(dst / MANIFEST, json.dumps({**fingerprint, "model_dir": str(Path(model_dir).resolve())},
                                                indent=1))

    try:
        _agree_on_rank0(info, prepare)
        summary = _run(norm, shard(pairs, info.rank, info.world_size, batch_size), device=device,
                       overwrite=overwrite, progress=progress and info.is_main, workers=workers,
                       prefetch=prefetch, writers=writers, batch_size=batch_size,
                       label=f" [rank 0 of {info.world_size}]" if info.enabled else "")
        if info.enabled:
            import torch.distributed as dist

            parts: list = [None] * info.world_size
            dist.all_gather_object(parts, (summary.written, summary.existing, summary.failed))
            if info.is_main:
                summary = TransformSummary(written=sum(p[0] for p in parts), existing=sum(p[1] for p in parts),
                                           failed=[f for p in parts for f in p[2]])
            summary.ranks = info.world_size
    finally:
        if lock is not None:
            lock.release()
    summary.seconds = time.perf_counter() - t0
    return summary


def _run(norm, pairs: list[tuple[Path, Path]], *, device: str, overwrite: bool, progress: bool,
         workers: int | None, prefetch: int, writers: int, batch_size: int, label: str) -> TransformSummary:
    """One process's share: read, transform and write ``pairs`` (see :func:`transform_folder`)."""
    summary = TransformSummary()
    todo = []
    for f, out in pairs:
        if out.exists() and not overwrite:
            summary.existing += 1
        else:
            todo.append((f, out))
    if not todo:
        return summary
    from tqdm import tqdm

    bar = tqdm(total=len(todo), desc=f"{norm.name}{label}", unit="img", disable=not progress, file=sys.stderr,
               smoothing=0.1)
    fix_mmap_threshold()  # a long stream of batch-sized temporaries must not fragment the heap
    if workers is None and len(todo) <= 2 * batch_size:
        workers = 0  # starting worker processes costs more than decoding two batches here
    loader = file_loader(ImageFiles([f for f, _ in todo], errors="return"), batch_size=batch_size, workers=workers,
                         prefetch=prefetch, collate=group_by_size)
    in_flight: deque[Future] = deque()

    def write(targets: list[Path], out: torch.Tensor) -> None:  # in a writer thread (torch and PIL release the GIL)
        for target, img in zip(targets, to_uint8(out), strict=True):
            write_image(target, img)

    def drain(keep: int) -> None:
        while len(in_flight) > keep:
            in_flight.popleft().result()  # a failed write (disk full, ...) stops the run here

    with ThreadPoolExecutor(max_workers=writers, thread_name_prefix="cellbench-write") as pool:
        try:
            for batch in loader:
                for path, reason in batch.failed:
                    summary.failed.append((path, reason))
                    log.warning("skipping %s", reason)
                    bar.update()
                for indices, images in batch.groups:
                    with torch.inference_mode():
                        out = norm.transform(images.to(device))
                    in_flight.append(pool.submit(write, [todo[i][1] for i in indices], out.cpu()))
                    summary.written += len(indices)
                    bar.update(len(indices))
                    drain(2 * writers)  # bounded: at most this many batches wait to be written
            drain(0)
        except BaseException:
            for fut in in_flight:  # outputs already handed over are finished (atomically) or dropped
                fut.cancel()
            raise
        finally:
            bar.close()
    return summary
