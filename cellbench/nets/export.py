"""ONNX export of a generator, checked against PyTorch with onnxruntime."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError


def export_onnx(
    generator: nn.Module,
    path: str | os.PathLike,
    *,
    size: int = 256,
    opset: int = 17,
    check: bool = True,
    seed: int = 0,
) -> float:
    """Write ``generator`` (eval mode, float32, CPU) as ONNX with dynamic batch, height and width.

    Input ``"images"`` and output ``"output"`` are ``(N, 3, H, W)`` float32 in [0, 1]; ``H`` and
    ``W`` must be multiples of ``2 ** levels`` (pad first, as :func:`~cellbench.nets.transform_tiled`
    does). With ``check``, runs both on a seeded random ``(2, 3, size, size)`` batch in onnxruntime
    and returns the largest absolute difference (otherwise ``nan``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    g = generator.float().cpu().eval()
    example = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(seed))
    from ..fs import atomic_path  # unique temporary name, the umask's mode, one os.replace

    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            g,
            (example,),
            str(tmp),
            dynamo=False,
            opset_version=opset,
            input_names=["images"],
            output_names=["output"],
            dynamic_axes={
                "images": {0: "batch", 2: "height", 3: "width"},
                "output": {0: "batch", 2: "height", 3: "width"},
            },
        )
    if not check:
        return float("nan")
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise ConfigError(f"checking the export needs onnxruntime ({exc})") from None
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"images": example.numpy()})[0]
    with torch.no_grad():
        want = g(example).numpy()
    return float(np.abs(got - want).max())
