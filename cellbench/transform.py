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

At scale: files stream through a DataLoader with a bounded prefetch (memory does not grow with
the folder); on the CPU, for every normalizer but the U-Net generators, every process (the main one and its
workers) runs the whole chain, decode -> transform -> encode -> write, on its own batches
(:func:`_run_chains`); ``torchrun --nproc_per_node=N -m cellbench transform ...`` deals the sorted
file list out by rank (:func:`shard`); see ``docs/scale.md``.
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

from .data.stream import (
    ImageFiles,
    as_float,
    as_uint8,
    default_workers,
    file_loader,
    fix_mmap_threshold,
    group_by_size,
    heap_reused,
    reuse_heap,
)
from .errors import ConfigError
from .io import is_image_file, write_planes
from .methods import load_normalizer
from .methods.base import STATE_FILE, read_meta
from .threads import limit_threads, usable_cores
from .train.distributed import DistInfo

log = logging.getLogger(__name__)

MANIFEST = ".cellbench-transform.json"
#: zlib level of PNG outputs: lossless at any level; 1 writes a noisy 320-px image ~5x faster than 6
DEFAULT_PNG_LEVEL = 1
#: JPEG outputs (a JPEG input gives a JPEG output)
DEFAULT_JPEG_QUALITY = 95


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
                     prefetch: int = 2, writers: int = 1, dist_info: DistInfo | None = None,
                     png_level: int = DEFAULT_PNG_LEVEL, jpeg_quality: int = DEFAULT_JPEG_QUALITY) -> TransformSummary:
    """Transform every image under ``input_dir`` into ``output_dir`` (same relative names and formats).

    Streaming: the sorted file list is read by a DataLoader in batches of ``batch_size`` files (a
    batch's images of one size are transformed together), at most ``prefetch`` batches ahead per
    worker process, so memory stays bounded by the batches in flight whatever the folder holds.
    Two ways to use the cores:

    * **process-parallel** (on the CPU, every normalizer but ccgan/pcnet): the main process and
      ``workers`` DataLoader worker processes each run the whole chain on the batches dealt to
      them in turn (decode, transform with one intra-op thread, convert, encode, write); only counts
      cross a process boundary. ``None``: :func:`default_transform_workers` (usable cores - 1, so one
      chain per core); ``0``: the main process alone, with torch's threads. ``writers`` is unused.
    * **main process** (the generators ``ccgan``/``pcnet``, any ``engine``, or ``--device cuda``):
      ``workers`` processes decode (``None``: :func:`cellbench.data.stream.default_workers`; 0:
      here), the normalizer runs here with torch's threads, and ``writers`` threads convert, encode
      and write.

    Every output is written atomically (a temporary file renamed into place), so a killed run
    leaves no partial output (only hidden ``.NAME.XXXX.tmp`` files, removed by the next run).
    Outputs of the same model that already exist are skipped unless ``overwrite`` (so an
    interrupted run resumes); see the module docstring for the rules that keep inputs safe and
    outputs tied to their model. Unreadable inputs are reported and skipped. A progress bar
    goes to stderr (``progress``). PNG outputs use zlib level ``png_level`` (0-9; default 1: lossless
    like any level, ~5x faster to write than 6 and ~10-20 % larger), JPEG outputs ``jpeg_quality``.

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
    if not 0 <= png_level <= 9:
        raise ConfigError(f"--png-level must be 0..9, got {png_level}")
    if not 1 <= jpeg_quality <= 100:
        raise ConfigError(f"--jpeg-quality must be 1..100, got {jpeg_quality}")
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
                       label=f" [rank 0 of {info.world_size}]" if info.enabled else "",
                       write_kwargs={"compress_level": png_level, "quality": jpeg_quality})
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


def _parallel(norm, device: str) -> bool:
    """Whether the whole chain runs in parallel processes (:func:`_run_chains`): every normalizer on the
    CPU but the U-Net generators (ccgan, pcnet: their inference engines, their threads, their
    activations' memory once per process), which stay in the main process (:func:`_run_here`), as
    does anything on a GPU."""
    return str(device) == "cpu" and getattr(norm, "G_xy", None) is None


def default_transform_workers(norm, device: str, *, local_ranks: int | None = None) -> int:
    """``--workers`` when not given. Process-parallel chain: one process per usable core but one (the
    main process runs a chain too), the cores shared among the ranks ``torchrun`` started on this
    machine (``LOCAL_WORLD_SIZE``), at most 7; otherwise :func:`cellbench.data.stream.default_workers`
    decoding processes."""
    if not _parallel(norm, device):
        return default_workers()
    ranks = local_ranks if local_ranks is not None else int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    return max(0, min(7, usable_cores() // max(1, ranks) - 1))


@dataclass
class _Done:
    """What one batch came to: images written, unreadable ``(path, reason)``."""

    written: int
    failed: list[tuple[str, str]]


class _Chain:
    """One batch of :class:`Decoded` files -> normalizer -> ``uint8`` -> encoded and written
    (atomically): the collate function of the process-parallel mode's DataLoader (so it runs in the
    worker that decoded the batch) and what the main process runs on its own batches.

    Nothing but a :class:`_Done` goes back to the main process: no pixels cross a process boundary,
    and each process is one single-threaded chain (a DataLoader worker runs torch with 1 intra-op
    thread; the main process is limited to 1 while workers run), so ``N`` chains keep ``N`` cores
    busy without OpenMP barriers or the GIL between them (measured: the old split, decoding
    workers feeding float batches through shared memory to a 2-thread normalizer and a writer
    thread, reached 0.50 of the in-memory rate for hm on 2 cores). With ``fork`` the workers share
    the loaded normalizer; elsewhere it is pickled to them.
    """

    def __init__(self, norm, targets: list[Path], write_kwargs: dict) -> None:
        self.norm, self.targets, self.write_kwargs = norm, [str(t) for t in targets], write_kwargs

    def __call__(self, batch: list) -> _Done:
        groups = group_by_size(batch)
        written = 0
        for indices, images in groups.groups:
            with torch.inference_mode():
                out = self.norm.transform(as_float(images))
            for i, img in zip(indices, as_uint8(out, overwrite=True), strict=True):
                write_planes(self.targets[i], img, **self.write_kwargs)
            written += len(indices)
        return _Done(written, groups.failed)


def _decode_worker_init(_worker_id: int) -> None:
    fix_mmap_threshold()  # inherited through fork; set again for the other start methods


def _chain_worker_init(_worker_id: int) -> None:
    # one thread repeating the same batch-sized work: reuse the heap instead of faulting in fresh
    # mmap pages for every intermediate (hm ~1.5x, poly ~1.7x faster per image; see reuse_heap)
    reuse_heap()


def _run(norm, pairs: list[tuple[Path, Path]], *, device: str, overwrite: bool, progress: bool,
         workers: int | None, prefetch: int, writers: int, batch_size: int, label: str,
         write_kwargs: dict) -> TransformSummary:
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
    if workers is None:
        workers = 0 if len(todo) <= 2 * batch_size else default_transform_workers(norm, device)
        # (starting worker processes costs more than two batches)
    files = ImageFiles([f for f, _ in todo], errors="return")
    try:
        if _parallel(norm, device):
            _run_chains(norm, todo, files, summary, bar, workers=workers, prefetch=prefetch, batch_size=batch_size,
                        write_kwargs=write_kwargs)
        else:
            _run_here(norm, todo, files, summary, bar, device=device, workers=workers, prefetch=prefetch,
                      writers=writers, batch_size=batch_size, write_kwargs=write_kwargs)
    finally:
        bar.close()
    return summary


def _run_chains(norm, todo, files, summary, bar, *, workers: int, prefetch: int, batch_size: int,
                write_kwargs: dict) -> None:
    """Process-parallel: ``workers + 1`` chains (decode, transform, convert, encode, write), the main
    process and ``workers`` DataLoader workers, each single-threaded, the batches dealt out in turn
    (the main process takes batch 0 while the workers start). ``workers=0``: the main process alone,
    with torch's threads."""
    chain = _Chain(norm, [t for _, t in todo], write_kwargs)
    chains = workers + 1
    batches = [list(range(k, min(k + batch_size, len(todo)))) for k in range(0, len(todo), batch_size)]
    theirs = [b for k, b in enumerate(batches) if k % chains]
    results = None
    if theirs:
        results = iter(file_loader(files, batch_size=batch_size, workers=workers, prefetch=prefetch, collate=chain,
                                   batches=theirs, worker_init_fn=_chain_worker_init))
    try:
        with limit_threads(1 if theirs else None), heap_reused():
            for k, b in enumerate(batches):
                if k % chains:
                    assert results is not None
                    done = next(results)
                else:
                    done = chain([files[i] for i in b])
                for path, reason in done.failed:
                    summary.failed.append((path, reason))
                    log.warning("skipping %s", reason)
                summary.written += done.written
                bar.update(done.written + len(done.failed))
    finally:
        # stop the workers now (each finishes the batch in hand, so no partial output), not whenever
        # the iterator is collected
        del results


def _run_here(norm, todo, files, summary, bar, *, device: str, workers: int, prefetch: int, writers: int,
              batch_size: int, write_kwargs: dict) -> None:
    """The normalizer in this process (a network, a GPU, or ``workers=0``): ``workers`` processes
    decode, ``writers`` threads convert, encode and write."""
    loader = file_loader(files, batch_size=batch_size, workers=workers, prefetch=prefetch, collate=group_by_size,
                         worker_init_fn=_decode_worker_init if workers > 0 else None)
    in_flight: deque[Future] = deque()

    def write(targets: list[Path], out: torch.Tensor) -> None:  # in a writer thread (torch and PIL release the GIL)
        for target, img in zip(targets, as_uint8(out, overwrite=True), strict=True):
            write_planes(target, img, **write_kwargs)

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
                        out = norm.transform(as_float(images.to(device)))
                    in_flight.append(pool.submit(write, [todo[i][1] for i in indices], out.cpu()))
                    summary.written += len(indices)
                    bar.update(len(indices))
                    drain(2 * writers)  # bounded: at most this many batches wait to be written
            drain(0)
        except BaseException:
            for fut in in_flight:  # outputs already handed over are finished (atomically) or dropped
                fut.cancel()
            raise
