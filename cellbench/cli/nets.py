"""Network commands: ``describe`` (layers and parameter counts), ``export`` (ONNX, ``.cube``),
``distill`` (fast students of a fitted model) and ``profile`` (speed of a saved model)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import ConfigError
from . import checks


def cmd_describe(args: argparse.Namespace) -> int:
    from ..methods import create_normalizer
    from ..nets.summary import describe_network

    norm = create_normalizer(args.method, args.preset)
    if not type(norm).trainable:  # every Normalizer has networks(); only trained ones have any
        raise ConfigError(f"{args.method!r} has no neural networks to describe (try ccgan or pcnet)")
    nets = {name: describe_network(net) for name, net in norm.networks().items()}
    if args.json:
        for info in nets.values():
            if not args.layers:
                info.pop("layers")
        print(json.dumps(nets, indent=1))
        return 0
    title = f"{args.method}" + (f" (preset {args.preset})" if args.preset else "")
    print(title)
    for name, info in nets.items():
        print(
            f"\n{name}: {info['class']}, {info['params']:,} parameters (two of them are trained)"
            if name != "feature_network"
            else f"\n{name}: {info['class']}, {info['params']:,} parameters"
        )
        width = max(len(r["name"]) for r in info["layers"])
        for row in info["layers"]:
            print(f"  {row['name']:<{width}}  {row['params']:>10,}  {row['layer']}")
    return 0


def _opset_range() -> tuple[int, int]:
    """Opsets both the installed onnx and torch's TorchScript exporter (``dynamo=False``) support."""
    try:
        import onnx
    except ImportError as exc:
        raise ConfigError(f"export needs the onnx package ({exc}); pip install onnx") from None
    try:
        from torch.onnx._constants import ONNX_MIN_OPSET as lo
        from torch.onnx._constants import ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET as hi
    except ImportError:  # a torch without these private constants: the range known to work
        lo, hi = 7, 17
    return lo, min(hi, onnx.defs.onnx_opset_version())


def cmd_export(args: argparse.Namespace) -> int:
    from ..methods import load_normalizer
    from ..nets.export import export_onnx

    if args.cube is not None:
        return _export_cube(args)
    if args.onnx is None:
        raise ConfigError("export: give --onnx FILE (ccgan/pcnet generator) or --cube FILE (lut3d table)")
    lo, hi = _opset_range()
    checks.count(args.opset, "--opset", min=lo, max=hi)
    checks.size(args.size, min=16)
    checks.input_dir(args.model_dir, "MODEL_DIR")
    checks.output_file(args.onnx, "--onnx")
    norm = load_normalizer(args.model_dir)
    gen = getattr(norm, "G_xy" if args.direction == "xy" else "G_yx", None)
    if gen is None:
        raise ConfigError(
            f"{args.model_dir}: a {norm.name!r} model has no generator to export "
            "(export works for ccgan and pcnet models)"
        )
    diff = export_onnx(gen, args.onnx, size=args.size, opset=args.opset)
    print(
        f"wrote {args.onnx} (G_{args.direction}, opset {args.opset}); "
        f"max |onnxruntime - PyTorch| = {diff:.2e} on a {args.size}x{args.size} test batch"
    )
    if not diff <= 1e-3:
        print("cellbench: warning: the ONNX output differs from PyTorch by more than 1e-3")
        return 1
    return 0


def _export_cube(args: argparse.Namespace) -> int:
    from ..methods import load_normalizer
    from ..methods.distill import lut_of
    from ..nets.lut import write_cube

    checks.input_dir(args.model_dir, "MODEL_DIR")
    checks.output_file(args.cube, "--cube")
    if args.onnx is not None:
        raise ConfigError("export: --onnx and --cube write different models; give one of them")
    norm = load_normalizer(args.model_dir)
    lut = lut_of(norm)
    teacher = norm.params.get("teacher")
    write_cube(args.cube, lut, title=f"cellbench lut3d{f' distilled from {teacher}' if teacher else ''}")
    m = int(lut.shape[-1])
    print(f"wrote {args.cube} (LUT_3D_SIZE {m}; {norm.params['interpolation']} interpolation in cellbench; "
          "most tools interpolate .cube files trilinearly or tetrahedrally)")
    return 0


def cmd_distill(args: argparse.Namespace) -> int:
    import time

    from ..methods import load_normalizer
    from ..methods.distill import DISTILL_KINDS, distill
    from ..options import check_choice
    from ..sim import load_training_data

    checks.input_dir(args.teacher_dir, "TEACHER_MODEL_DIR")
    check_choice(args.kind, "--kind", DISTILL_KINDS)
    checks.size(args.image_size, "--image-size", min=16)
    checks.seed(args.seed)
    out = checks.output_dir(args.out)
    options = _parse_options(args.set)
    if args.size is not None:
        if args.kind != "lut3d":
            raise ConfigError("--size (lattice points of the table) applies to --kind lut3d")
        options["size"] = checks.count(args.size, "--size", min=2, max=129)
    teacher = load_normalizer(args.teacher_dir)
    data = load_training_data(args.data, size=args.image_size, seed=args.seed, kinds=("paired", "unpaired"))
    t0 = time.perf_counter()
    student = distill(teacher, data, args.kind, seed=args.seed, **options)
    student.save(out)
    print(f"distilled {teacher.name} into {args.kind} in {time.perf_counter() - t0:.1f} s; saved to {out}")
    return 0


def _parse_options(values: list[str] | None) -> dict:
    from ..options import parse_set_items

    return parse_set_items(values)


def cmd_profile(args: argparse.Namespace) -> int:
    from ..eval.profiling import format_profile, profile_normalizer
    from ..methods import load_normalizer
    from ..nets.engines import with_engine
    from ..options import resolve_device

    checks.input_dir(args.model_dir, "MODEL_DIR")
    sizes = _batch_sizes(args.batch_sizes)
    checks.size(args.size, min=16)
    checks.count(args.repeats, "--repeats")
    budget = checks.finite(args.seconds, "--seconds", min=0.1)
    device = resolve_device(args.device)
    norm = load_normalizer(args.model_dir)
    if args.engine != "eager":
        norm = with_engine(norm.to("cpu"), args.engine)
    if args.threads is not None:
        checks.count(args.threads, "--threads")
    prof = profile_normalizer(norm, size=args.size, device=device, batch_sizes=sizes, repeats=args.repeats,
                              max_seconds=budget, threads=args.threads, warmup=args.warmup)
    prof["engine"] = args.engine
    prof["model_dir"] = str(args.model_dir)
    if args.json:
        print(json.dumps(prof, indent=1, default=str))
    else:
        print(format_profile(prof))
    return 0


def _batch_sizes(text: str) -> list[int]:
    try:
        sizes = [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--batch-sizes {text!r}: comma-separated positive integers expected (e.g. 1,4,16)") from None
    if not sizes or min(sizes) < 1:
        raise ConfigError(f"--batch-sizes {text!r}: comma-separated positive integers expected (e.g. 1,4,16)")
    return sizes


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("describe", help="print a learned method's networks: layers and parameter counts")
    p.add_argument("method", help="ccgan or pcnet")
    p.add_argument("--preset", default=None, help="preset from models/<method>.toml (paper, quick)")
    p.add_argument(
        "--json",
        action="store_true",
        help='one JSON object keyed by network: {"generator": {"params": N, ...}}',
    )
    p.add_argument("--layers", action="store_true", help="with --json: include the layer table")
    p.set_defaults(func=cmd_describe)

    p = sub.add_parser(
        "export", help="export a ccgan/pcnet generator to ONNX (checked with onnxruntime) or a lut3d to .cube"
    )
    p.add_argument("model_dir", type=Path, help="model folder written by `cellbench fit`")
    p.add_argument("--onnx", type=Path, help="ONNX file to write (ccgan/pcnet)")
    p.add_argument("--cube", type=Path, help="write a lut3d model's table as a .cube 3D LUT file instead")
    p.add_argument("--direction", choices=("xy", "yx"), default="xy", help="G_xy (X->Y, default) or G_yx")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p.add_argument("--size", type=int, default=256, help="side of the check batch (default 256)")
    p.set_defaults(func=cmd_export)

    from ..nets.engines import ENGINES

    p = sub.add_parser("distill", help="fit a fast student (3D LUT, pixel net, small-context net) to a fitted model")
    p.add_argument("teacher_dir", type=Path, metavar="TEACHER_MODEL_DIR", help="model folder of the fitted teacher")
    p.add_argument("--data", required=True, help="training data, as for `fit --data` (the teacher's X images are used)")
    p.add_argument("--out", required=True, type=Path, help="model folder to write")
    p.add_argument("--kind", default="lut3d", help="lut3d (default), pixelnet or ctx")
    p.add_argument("--size", type=int, help="lattice points per axis of a lut3d (default 33)")
    p.add_argument("--image-size", type=int, default=256, help="image side after centre crop/pad, as `fit --size` "
                   "(default 256)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="a student option (repeatable), e.g. interpolation=trilinear, basis=3, hidden=32")
    p.set_defaults(func=cmd_distill)

    p = sub.add_parser("profile", help="speed of a saved model on this machine: latency, throughput, memory")
    p.add_argument("model_dir", type=Path, metavar="MODEL_DIR", help="model folder written by `cellbench fit`")
    p.add_argument("--engine", default="eager", choices=ENGINES, help="inference engine of ccgan/pcnet (default eager)")
    p.add_argument("--batch-sizes", default="1,4,16", help="comma-separated batch sizes (default 1,4,16)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N")
    p.add_argument("--size", type=int, default=256, help="image side (default 256)")
    p.add_argument("--repeats", type=int, default=10, help="timed calls per batch size (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls before each series (default 2)")
    p.add_argument("--seconds", type=float, default=60.0, help="time budget of the whole profile (default 60)")
    p.add_argument("--threads", type=int, help="torch intra-op threads during the profile (default: unchanged)")
    p.add_argument("--json", action="store_true", help="print the profile as one JSON object")
    p.set_defaults(func=cmd_profile)
