"""``cellbench simulate``: write simulated pairs; ``simulate calibrate``, ``resim``, ``validate``, ``measure``."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import ConfigError
from . import checks


def _system_help(role: str, default: str) -> str:
    return f"{role} system: a built-in name (dm1200-like, dm96-like) or a .toml file (default {default})"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "simulate",
        help="simulate paired two-system data (also: simulate calibrate | resim | validate | measure)",
        description="Render stained blood-cell scenes through two digital microscopes and write a paired "
        "dataset ROOT/X, ROOT/Y, ROOT/masks (class-balanced; byte-identical for the same "
        "arguments whatever --workers is). Sub-commands: `calibrate` compares simulated and "
        "real colours; `resim` turns a real labelled folder into pairs.",
    )
    p.add_argument("--n", type=int, default=800, help="number of pairs (default 800)")
    p.add_argument("--size", type=int, default=256, help="image size in px at 0.1 um/px (default 256)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="output folder ROOT")
    p.add_argument("--x-system", default="dm1200-like", help=_system_help("source (X)", "dm1200-like"))
    p.add_argument("--y-system", default="dm96-like", help=_system_help("target (Y)", "dm96-like"))
    p.add_argument("--workers", type=int, default=1, help="processes (default 1)")
    p.add_argument(
        "--max-shift", type=float, default=0.5, help="max misregistration shift in px (default 0.5)"
    )
    p.add_argument("--max-rotation", type=float, default=0.1, help="max misregistration rotation in degrees")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.add_argument("--no-progress", dest="quiet", action="store_true", help=argparse.SUPPRESS)  # old name
    p.add_argument("--replace", action="store_true",
                   help="remove the dataset already in --out first (a non-empty --out is refused otherwise)")
    p.set_defaults(func=_simulate, _parser=p)
    ssub = p.add_subparsers(dest="sim_command", metavar="SUBCOMMAND")

    c = ssub.add_parser(
        "calibrate",
        help="compare simulated and real colours per class and region",
        description="Segment real and simulated Y images into background, red cells, WBC "
        "nucleus and cytoplasm and print mean CIELAB and CIEDE2000 per class/region.",
    )
    c.add_argument(
        "--real", type=Path, required=True, help="real labelled folder ROOT/<class>/<file> (e.g. PBC)"
    )
    c.add_argument("--system", default="dm96-like", help="system to compare (default dm96-like)")
    c.add_argument("--n-per-class", type=int, default=40, help="images per class, real and simulated")
    c.add_argument("--size", type=int, default=256)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--json", type=Path, help="also write the table as JSON")
    c.set_defaults(func=_calibrate)

    r = ssub.add_parser(
        "resim",
        help="re-render real images under another system (real Y, simulated X)",
        description="Estimate per-pixel absorber amounts of each real image under the source "
        "system (NNLS in optical density after inverting its ISP), render them under "
        "the target system and write (simulated X, real Y) pairs with masks.",
    )
    r.add_argument("--real", type=Path, required=True, help="real labelled folder ROOT/<class>/<file>")
    r.add_argument("--from", dest="src", default="dm96-like", help="system of the real images")
    r.add_argument("--to", dest="dst", default="dm1200-like", help="system to render (X)")
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--size", type=int, default=256)
    r.add_argument("--limit-per-class", type=int, default=None)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    r.add_argument("--no-progress", dest="quiet", action="store_true", help=argparse.SUPPRESS)  # old name
    r.set_defaults(func=_resim)

    v = ssub.add_parser(
        "validate",
        help="realism check: sim -> real and real -> sim classifier transfer, FID/KID",
        description="Train the WBC classifier on simulated Y images and test it on a real labelled folder "
        "(sim -> real); train it on the real folder's train split and test it on fresh simulated "
        "images (real -> sim); FID/KID between simulated and real images on the real-trained "
        "classifier's features. Targets: sim -> real >= 0.60, real -> sim >= 0.85. The real-trained "
        "classifier is cached in --work, so a rerun after a simulator change retrains only the "
        "simulated side. Exit status 0 when both targets hold, 1 otherwise.",
    )
    v.add_argument("--real", type=Path, required=True, help="real labelled folder ROOT/<class>/<file> (e.g. PBC)")
    v.add_argument("--n-per-class", type=int, default=200,
                   help="simulated training images per class, split 90/10 train/val (default 200)")
    v.add_argument("--n-test-per-class", type=int, default=100,
                   help="simulated test images per class, another seed (default 100)")
    v.add_argument("--system", default="dm96-like", help=_system_help("simulated (Y)", "dm96-like"))
    v.add_argument("--classifier-preset", default="quick",
                   help="classifier preset of models/classifier.toml (default quick; tiny for smoke runs)")
    v.add_argument("--real-eval", choices=["all", "test"], default="all",
                   help="real images sim -> real is scored on: all of them (default) or the test split")
    v.add_argument("--limit-per-class", type=int, default=None,
                   help="at most this many real images per class and split (quick looks)")
    v.add_argument("--size", type=int, default=256, help="real centre crop and simulated side in px (default 256)")
    v.add_argument("--seed", type=int, default=0)
    v.add_argument("--work", type=Path, default=None,
                   help="cache of real-trained classifiers (default $CELLBENCH_CACHE/validate or "
                   "$XDG_CACHE_HOME/cellbench/validate)")
    v.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    v.add_argument("--workers", type=int, default=1, help="processes rendering simulated images (default 1)")
    v.add_argument("--sim-seeds", type=int, default=1,
                   help="train this many simulated-side classifiers (seeds SEED..SEED+N-1) on the same simulated "
                   "images and judge sim -> real on their mean: one classifier's figure moves by 1-2 points, and per "
                   "class by 10 or more, with its initialisation alone (default 1; each more costs about 80 s)")
    v.add_argument("--json", action="store_true", help="print one JSON object instead of the text report")
    v.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    v.set_defaults(func=_validate)

    m = ssub.add_parser(
        "measure",
        help="measure class-conditional morphology from a real labelled folder",
        description="Segment the real images of a labelled folder and fit the class-conditional shape, "
        "texture and colour statistics the simulator samples from; write them as a parameter file.",
    )
    m.add_argument("--real", type=Path, required=True, help="real labelled folder ROOT/<class>/<file>")
    m.add_argument("--out", type=Path, required=True, help="parameter file to write")
    m.add_argument("--limit-per-class", type=int, default=None, help="at most this many images per class")
    m.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    m.add_argument("--split", choices=("all", "train", "val", "test"), default="all",
                   help="measure only this split of the folder's seeded 80/10/10 split (the packaged file: train)")
    m.set_defaults(func=_measure)


#: What ``simulate --replace`` removes: exactly the entries a simulated dataset consists of.
DATASET_ENTRIES = ("X", "Y", "masks", "splits.csv")


def _prepare_out(root: Path, *, replace: bool) -> None:
    """Refuse a non-empty ``--out`` (new pairs would mix with old ones, and the old test pairs would
    lose their split); with ``replace``, remove the old simulated dataset first."""
    import shutil

    from ..fs import FolderLock

    checks.output_dir(root)
    if not root.exists():
        return
    entries = sorted(e.name for e in root.iterdir() if e.name != FolderLock.NAME)
    if not entries:
        return
    if not replace:
        raise ConfigError(f"--out {root}: the folder is not empty ({', '.join(entries[:4])}"
                          f"{' ...' if len(entries) > 4 else ''}); choose an empty folder or pass --replace "
                          "to remove the dataset in it first")
    foreign = [e for e in entries if e not in DATASET_ENTRIES]
    if foreign:
        raise ConfigError(f"--out {root}: --replace removes only a dataset (X/, Y/, masks/, splits.csv), but the "
                          f"folder also holds {', '.join(foreign[:4])}; choose another folder")
    for e in DATASET_ENTRIES:
        target = root / e
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()


def _simulate(args) -> int:
    from ..fs import FolderLock
    from ..sim import load_system, write_paired_dataset

    if args.out is None:
        raise ConfigError("simulate: --out ROOT is required (see `cellbench simulate --help`)")
    checks.count(args.workers, "--workers", max=256)
    checks.count(args.n, "--n", max=checks.MAX_PAIRS)
    checks.size(args.size, min=32)
    checks.seed(args.seed)
    checks.finite(args.max_shift, "--max-shift", min=0.0, max=args.size / 4)
    checks.finite(args.max_rotation, "--max-rotation", min=0.0, max=180.0)
    checks.output_dir(args.out)
    for system in (args.x_system, args.y_system):
        load_system(system)  # a bad system name or file fails before --out is touched
    with FolderLock(args.out, what="simulated dataset"):
        _prepare_out(args.out, replace=args.replace)
        root = write_paired_dataset(
            args.out,
            args.n,
            size=args.size,
            seed=args.seed,
            x_system=args.x_system,
            y_system=args.y_system,
            workers=args.workers,
            progress=not args.quiet,
            max_shift_px=args.max_shift,
            max_rotation_deg=args.max_rotation,
        )
    print(f"wrote {args.n} pairs to {root} (X: {args.x_system}, Y: {args.y_system})")
    return 0


def _calibrate(args) -> int:
    from ..fs import atomic_write
    from ..sim.calibrate import calibration_table, format_table, summary_line, target_failures

    checks.input_dir(args.real, "--real")
    checks.count(args.n_per_class, "--n-per-class", max=100_000)
    checks.size(args.size, min=32)
    checks.seed(args.seed)
    if args.json:
        checks.output_file(args.json, "--json")
    rows = calibration_table(
        args.real, system=args.system, n_per_class=args.n_per_class, size=args.size, seed=args.seed
    )
    print(format_table(rows))
    if args.json:
        import json

        atomic_write(args.json, json.dumps(rows, indent=1))
    print(summary_line(rows))
    return 1 if target_failures(rows) else 0


def _resim(args) -> int:
    from ..sim.resim import resimulate_folder

    checks.input_dir(args.real, "--real")
    checks.size(args.size, min=32)
    checks.seed(args.seed)
    if args.limit_per_class is not None:
        checks.count(args.limit_per_class, "--limit-per-class")
    checks.output_dir(args.out)

    n = resimulate_folder(
        args.real,
        args.out,
        src=args.src,
        dst=args.dst,
        size=args.size,
        limit_per_class=args.limit_per_class,
        seed=args.seed,
        progress=not args.quiet,
    )
    print(f"wrote {n} pairs (X: {args.dst} re-simulated, Y: real) to {args.out}")
    return 0


def _validate(args) -> int:
    import json

    from ..eval.validate import format_report, validate_simulator
    from ..sim import load_system

    checks.input_dir(args.real, "--real")
    checks.count(args.n_per_class, "--n-per-class", min=10, max=100_000)
    checks.count(args.n_test_per_class, "--n-test-per-class", max=100_000)
    checks.size(args.size, min=32)
    checks.seed(args.seed)
    checks.count(args.workers, "--workers", max=256)
    checks.count(args.sim_seeds, "--sim-seeds", max=100)
    if args.threads is not None:
        checks.count(args.threads, "--threads", max=1024)
    if args.limit_per_class is not None:
        checks.count(args.limit_per_class, "--limit-per-class")
    if args.work is not None:
        checks.output_dir(args.work, "--work")
    load_system(args.system)
    result = validate_simulator(
        args.real,
        n_per_class=args.n_per_class,
        n_test_per_class=args.n_test_per_class,
        system=args.system,
        preset=args.classifier_preset,
        seed=args.seed,
        size=args.size,
        real_eval=args.real_eval,
        limit_per_class=args.limit_per_class,
        work_dir=args.work,
        threads=args.threads,
        workers=args.workers,
        sim_seeds=args.sim_seeds,
        progress=not args.quiet,
    )
    print(json.dumps(result, indent=1) if args.json else format_report(result))
    return 0 if result["passed"]["all"] else 1


def _measure(args) -> int:
    from ..sim.morphology import measure_folder, save_morphology

    checks.input_dir(args.real, "--real")
    if args.limit_per_class is not None:
        checks.count(args.limit_per_class, "--limit-per-class")
    checks.output_file(args.out, "--out")
    split = None if args.split == "all" else args.split
    params = measure_folder(args.real, limit_per_class=args.limit_per_class, progress=not args.quiet, split=split)
    save_morphology(params, args.out)
    print(f"wrote the morphology measured on {args.real} to {args.out}")
    return 0
