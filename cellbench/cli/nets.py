"""Network commands: ``describe`` (layers and parameter counts) and ``export`` (ONNX)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import ConfigError


def cmd_describe(args: argparse.Namespace) -> int:
    from ..methods import create_normalizer
    from ..nets.summary import describe_network

    norm = create_normalizer(args.method, args.preset)
    if not hasattr(norm, "networks"):
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


def cmd_export(args: argparse.Namespace) -> int:
    from ..methods import load_normalizer
    from ..nets.export import export_onnx

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
        "export", help="export a trained ccgan/pcnet generator to ONNX (checked with onnxruntime)"
    )
    p.add_argument("model_dir", type=Path, help="model folder written by `cellbench fit`")
    p.add_argument("--onnx", type=Path, required=True, help="ONNX file to write")
    p.add_argument("--direction", choices=("xy", "yx"), default="xy", help="G_xy (X->Y, default) or G_yx")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p.add_argument("--size", type=int, default=256, help="side of the check batch (default 256)")
    p.set_defaults(func=cmd_export)
