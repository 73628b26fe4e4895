"""Core commands: ``methods``, ``fit``, ``transform``, ``data check``, ``data download``."""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import time
from pathlib import Path

from ..options import parse_set_items, resolve_device
from . import checks

log = logging.getLogger(__name__)


def cmd_methods(args: argparse.Namespace) -> int:
    from ..methods import NORMALIZERS
    from ..presets import preset_names

    width = max(len(n) for n in NORMALIZERS.names())
    for name in NORMALIZERS.names():
        cls = NORMALIZERS.get(name)
        presets = preset_names(name)
        kinds = "/".join(cls.data_kinds)
        extra = f"  [presets: {', '.join(presets)}]" if presets else ""
        print(f"{name:<{width}}  {NORMALIZERS.describe(name)} ({kinds}){extra}")
    return 0


def cmd_fit(args: argparse.Namespace) -> int:
    from ..fs import FolderLock
    from ..methods import NORMALIZERS, create_normalizer
    from ..sim import load_training_data
    from ..train.distributed import setup_distributed, shutdown

    overrides = parse_set_items(args.set)
    for flag, key in (("vgg_weights", "vgg_weights"), ("feature_net", "feature_net"),
                      ("iterations", "iterations"), ("device", "device"), ("classifier_dir", "classifier_dir")):
        value = getattr(args, flag, None)
        if value is not None:
            overrides[key] = str(value) if isinstance(value, Path) else value
    checks.size(args.size, min=16)
    checks.seed(args.seed)
    if args.iterations is not None:
        checks.count(args.iterations, "--iterations")
    if args.device is not None:
        overrides["device"] = resolve_device(args.device)
    out = checks.output_dir(args.out)
    if args.quiet and NORMALIZERS.get(args.method).trainable:
        overrides["progress"] = False
    norm = create_normalizer(args.method, args.preset, **overrides)
    # the data is read (and checked) before the model folder is created or locked
    data = load_training_data(args.data, size=args.size, seed=args.seed, kinds=type(norm).data_kinds)
    dist = setup_distributed(overrides.get("device", "auto"))  # explicit; a no-op outside torchrun
    # two fits into one folder would mix checkpoints; the ranks of one torchrun fit share it (rank 0 locks)
    lock = FolderLock(out, what="model folder") if dist.is_main else contextlib.nullcontext()
    try:
        with lock:
            norm.bind_run_dir(out, resume=args.resume)
            if hasattr(norm, "bind_distributed"):  # the trained networks: one rank of the group
                norm.bind_distributed(dist)
            t0 = time.perf_counter()
            norm.fit(data, seed=args.seed)
            norm.save(out)  # a no-op on ranks other than 0
    finally:
        shutdown(dist)
    if not dist.is_main:
        return 0
    print(f"fitted {args.method} on {len(data.x) if hasattr(data, 'x') and hasattr(data.x, 'shape') else ''} "
          f"training images in {time.perf_counter() - t0:.1f} s; saved to {out}")
    return 0


def cmd_transform(args: argparse.Namespace) -> int:
    from ..train.distributed import setup_distributed, shutdown
    from ..transform import transform_folder

    checks.count(args.batch_size, "--batch-size", max=4096)
    if args.workers is not None:
        checks.count(args.workers, "--workers", min=0, max=64)
    checks.count(args.writers, "--writers", max=64)
    checks.count(args.prefetch, "--prefetch", max=64)
    from ..transform import DEFAULT_JPEG_QUALITY, DEFAULT_PNG_LEVEL

    png_level = (DEFAULT_PNG_LEVEL if args.png_level is None
                 else checks.count(args.png_level, "--png-level", min=0, max=9))
    jpeg_quality = (DEFAULT_JPEG_QUALITY if args.jpeg_quality is None
                    else checks.count(args.jpeg_quality, "--jpeg-quality", min=1, max=100))
    args.device = resolve_device(args.device)
    checks.input_dir(args.model, "--model")
    checks.input_dir(args.input, "input")
    checks.output_dir(args.output, "output")
    dist = setup_distributed(args.device)  # explicit; a no-op outside torchrun (then one process does all)
    try:
        device = str(dist.device) if dist.enabled and dist.device is not None else args.device
        summary = transform_folder(args.model, args.input, args.output, batch_size=args.batch_size,
                                   device=device, overwrite=args.overwrite, progress=not args.quiet,
                                   engine=args.engine, workers=args.workers, prefetch=args.prefetch,
                                   writers=args.writers, dist_info=dist, png_level=png_level,
                                   jpeg_quality=jpeg_quality)
    finally:
        shutdown(dist)
    if not dist.is_main:
        return 1 if summary.failed else 0
    rate = summary.written / max(summary.seconds, 1e-9)
    ranks = f" by {summary.ranks} processes" if summary.ranks > 1 else ""
    print(f"transformed {summary.written} image(s), skipped {summary.existing} already done, "
          f"{len(summary.failed)} unreadable -> {args.output} ({summary.seconds:.1f} s, {rate:.0f} images/s{ranks})")
    for _path, msg in summary.failed:
        print(f"  unreadable: {msg}", file=sys.stderr)
    return 1 if summary.failed else 0


def cmd_data_check(args: argparse.Namespace) -> int:
    from ..data.check import check_dataset

    checks.input_dir(args.root, "ROOT")
    checks.count(args.workers, "--workers", max=256)
    rep = check_dataset(args.root, workers=args.workers, progress=not args.quiet)
    print(f"{rep.root}: {rep.layout} dataset, {rep.files_decoded} files decoded in {rep.seconds:.2f} s "
          f"({rep.files_decoded / max(rep.seconds, 1e-9):.0f} files/s)")
    splits = ("train", "val", "test")
    print(f"  {'class':<14}" + "".join(f"{s:>7}" for s in splits) + f"{'total':>8}")
    for cls in sorted(rep.counts):
        c = rep.counts[cls]
        print(f"  {cls:<14}" + "".join(f"{c[s]:>7}" for s in splits) + f"{sum(c.values()):>8}")
    if rep.sizes:
        print("  sizes: " + ", ".join(f"{w}x{h} ({n})" for (h, w), n in rep.sizes.most_common()))
    for p in rep.problems:
        print(f"  {p.severity}: [{p.kind}] {p.message}")
    print(f"  {len(rep.errors)} error(s), {len(rep.warnings)} warning(s)")
    return 0 if rep.ok else 1


def cmd_data_download(args: argparse.Namespace) -> int:
    from ..data.download import download_dataset

    checks.output_dir(args.to, "--to")
    checks.finite(args.timeout, "--timeout", min=0.1, max=3600.0)
    out = download_dataset(args.name, Path(args.to), url=args.url, sha256=args.sha256, progress=not args.quiet,
                           timeout=args.timeout, keep_archive=args.keep_archive, force=args.force)
    print(f"{args.name} is ready in {out}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("methods", help="list the registered normalizers")
    p.set_defaults(func=cmd_methods)

    p = sub.add_parser("fit", help="fit a normalizer on a dataset's train split and save it")
    p.add_argument("method", help="registry key, e.g. affine, hm, ccgan (see `cellbench methods`)")
    p.add_argument("--data", required=True, help="dataset: ROOT, paired:ROOT, synthetic[:n=..], cross:x=DIR,y=DIR")
    p.add_argument("--out", required=True, help="model folder to write")
    p.add_argument("--preset", help="preset name from models/<method>.toml (e.g. quick, paper)")
    p.add_argument("--size", type=int, default=256, help="image size after centre crop/pad (default 256)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a method option (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue training from the last checkpoint in --out")
    p.add_argument("--iterations", type=int, help="training iterations (trained methods)")
    p.add_argument("--device", help="cpu or cuda (trained methods)")
    p.add_argument("--vgg-weights", type=Path, help="VGG-16 ImageNet weights file (pcnet)")
    p.add_argument("--feature-net", choices=["vgg16", "classifier"], help="feature network of pcnet's loss")
    p.add_argument("--classifier-dir", type=Path, help="trained WBC classifier (for --feature-net classifier)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar (trained methods: progress=false)")
    p.set_defaults(func=cmd_fit)

    p = sub.add_parser("transform", help="apply a saved normalizer to every image of a folder tree")
    p.add_argument("--model", required=True, help="model folder written by `cellbench fit`")
    p.add_argument("input", help="input folder (searched recursively)")
    p.add_argument("output", help="output folder (same names and sub-folders)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="cpu")
    from ..nets.engines import ENGINES

    p.add_argument("--engine", default="eager", choices=[e for e in ENGINES if e != "int8"],
                   help="CPU inference engine of ccgan/pcnet (cellbench.nets.engines; default eager; int8 needs "
                        "calibration images: Python API)")
    p.add_argument("--overwrite", action="store_true", help="redo images whose output already exists")
    p.add_argument("--workers", type=int, default=None,
                   help="worker processes (default: usable cores - 1; for hm/poly/other closed-form methods on the "
                        "CPU every process, the main one included, decodes, transforms, encodes and writes its own "
                        "batches; for ccgan/pcnet or --device cuda they decode; 0: the main process alone)")
    p.add_argument("--prefetch", type=int, default=2, help="batches each decoding worker reads ahead (default 2)")
    p.add_argument("--writers", type=int, default=1,
                   help="threads encoding and writing outputs when the normalizer runs in the main process "
                        "(ccgan/pcnet, --device cuda; default 1)")
    p.add_argument("--png-level", type=int, default=None,
                   help="zlib level of PNG outputs, 0-9 (lossless at every level; default 1: about 5x faster to "
                        "write than 6, files 10-20 %% larger)")
    p.add_argument("--jpeg-quality", type=int, default=None,
                   help="quality of JPEG outputs, 1-100 (a JPEG input gives a JPEG output; default 95)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_transform)

    data = sub.add_parser("data", help="dataset tools: check, download")
    dsub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    data.set_defaults(func=lambda a: (data.print_help(), 1)[1])
    p = dsub.add_parser("check", help="validate a paired or labelled dataset, reporting every problem")
    p.add_argument("root")
    p.add_argument("--workers", type=int, default=2, help="decoding threads (default 2)")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=cmd_data_check)
    p = dsub.add_parser("download", help="download a public dataset (pbc) into the labelled layout")
    p.add_argument("name", help="dataset name: pbc")
    p.add_argument("--to", required=True, help="target folder")
    p.add_argument("--url", help="override the source URL (a mirror)")
    p.add_argument("--sha256", help="expected SHA-256 of the archive")
    p.add_argument("--timeout", type=float, default=30.0, help="network timeout in seconds (default 30)")
    p.add_argument("--keep-archive", action="store_true", help="keep the downloaded archive after unpacking")
    p.add_argument("--force", action="store_true", help="download and unpack again even if complete")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=cmd_data_download)
