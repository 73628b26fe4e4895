"""Inference engines for the U-Net generators (ccGAN, pcNet) on the CPU: same weights, faster runs.

=================  ====================================================================  =========
engine             what it does                                                          precision
=================  ====================================================================  =========
``eager``          the module as trained, under ``torch.inference_mode``                 fp32
``folded``         batch norm folded into the preceding (transposed) convolution:        fp32
                   ``w' = w * g / sqrt(v + eps)``, ``b' = (b - mu) g / sqrt(v + eps) + beta``
                   (Ioffe & Szegedy 2015, eq. of the inference-time transform)
``channels_last``  ``folded`` in NHWC memory format (oneDNN's preferred layout)          fp32
``onnxruntime``    ``folded`` exported to ONNX, run by ONNX Runtime with all graph        fp32
                   optimisations and ``threads`` intra-op threads
``compile``        ``folded`` + channels-last through ``torch.compile`` (Inductor,       fp32
                   ``freezing``: weights are constants, convolutions pre-packed)
``bf16``           ``channels_last`` under ``torch.autocast("cpu", torch.bfloat16)``:    bf16
                   oneDNN runs the convolutions on AVX-512 BF16 / AMX units
``bf16_compile``   ``compile`` (with frozen, pre-packed weights) under bf16 autocast:     bf16
                   Inductor folds the casts into fused kernels and oneDNN keeps the
                   weights in its blocked bf16 layout between calls
``int8``           ONNX Runtime static quantization (QDQ, per-channel int8 weights,      int8
                   uint8 activations) calibrated on sample images (MinMax)
=================  ====================================================================  =========

fp32 engines agree with ``eager`` to 1e-3 (``tests/test_engines.py``); the reduced-precision ones
are checked by colour difference in ``benchmarks/engines_speed.py`` and
``benchmarks/distill_quality.py``.

:func:`build_engine` turns a generator into ``fn(images) -> images`` (``(N, 3, H, W)`` float32 in
[0, 1], sides multiples of the generator's ``multiple``); :func:`with_engine` switches a fitted
ccgan/pcnet normalizer to an engine (its ``inference_engine`` attribute, which its tiled
``transform`` calls instead of the module).
"""

from __future__ import annotations

import copy
import io
import logging
import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError

log = logging.getLogger(__name__)

ENGINES = ("eager", "folded", "channels_last", "onnxruntime", "compile", "bf16", "bf16_compile", "int8")
#: engines whose output is computed in float32 (held to 1e-3 of eager)
FP32_ENGINES = ("eager", "folded", "channels_last", "onnxruntime", "compile")

__all__ = ["ENGINES", "FP32_ENGINES", "fold_batch_norm", "build_engine", "with_engine", "engine_available"]

Engine = Callable[[torch.Tensor], torch.Tensor]


def fold_batch_norm(module: nn.Module) -> nn.Module:
    """A copy of ``module`` (eval mode) with every ``Conv -> BatchNorm`` pair of a ``Sequential`` fused.

    Works for :class:`~torch.nn.Conv2d` and :class:`~torch.nn.ConvTranspose2d` (output channels on
    weight dimension 1) followed directly by :class:`~torch.nn.BatchNorm2d`; the batch norm is
    replaced by :class:`~torch.nn.Identity`. The original module is not modified.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    m = copy.deepcopy(module).eval()
    for seq in [s for s in m.modules() if isinstance(s, nn.Sequential)]:
        names = list(seq._modules)
        for a, b in zip(names[:-1], names[1:], strict=True):
            conv, bn = seq._modules[a], seq._modules[b]
            if isinstance(conv, (nn.Conv2d, nn.ConvTranspose2d)) and isinstance(bn, nn.BatchNorm2d):
                if bn.running_mean is None or not bn.track_running_stats:
                    continue
                seq._modules[a] = fuse_conv_bn_eval(conv, bn, transpose=isinstance(conv, nn.ConvTranspose2d))
                seq._modules[b] = nn.Identity()
    return m


def _onnx_bytes(model: nn.Module, size: int) -> bytes:
    example = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.float().cpu().eval(), (example,), buf, dynamo=False, opset_version=17,
                          input_names=["images"], output_names=["output"],
                          dynamic_axes={"images": {0: "batch", 2: "height", 3: "width"},
                                        "output": {0: "batch", 2: "height", 3: "width"}})
    return buf.getvalue()


def _ort_session(model_bytes: bytes, threads: int):
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise ConfigError(f"the onnxruntime/int8 engines need onnxruntime ({exc}); pip install onnxruntime") from None
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads)
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    # idle intra-op threads sleep instead of spinning: spinning threads steal the cores from
    # everything else in the process (torch, the next engine timed side by side) and from other jobs
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model_bytes, sess_options=opts, providers=["CPUExecutionProvider"])


def _ort_engine(session) -> Engine:
    def run(images: torch.Tensor) -> torch.Tensor:
        x = images.detach().float().cpu().contiguous().numpy()
        return torch.from_numpy(session.run(None, {"images": x})[0])

    return run


def _int8_bytes(fp32_bytes: bytes, calibration: torch.Tensor) -> bytes:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"images": calibration[i:i + 1].float().numpy()} for i in range(len(calibration))])

        def get_next(self):
            return next(self.batches, None)

    with tempfile.TemporaryDirectory(prefix="cellbench-int8-") as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(fp32_bytes)
        quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        return dst.read_bytes()


def build_engine(generator: nn.Module, name: str, *, threads: int | None = None,
                 calibration: torch.Tensor | None = None, size: int = 256) -> Engine:
    """``fn(images) -> images`` running ``generator``'s forward with engine ``name`` on the CPU.

    Parameters
    ----------
    generator:
        A CPU module (a :class:`~cellbench.nets.UNetGenerator`); it is copied, not modified.
    name:
        One of :data:`ENGINES`.
    threads:
        Intra-op threads of the ONNX Runtime sessions (default: torch's thread count).
    calibration:
        ``(N, 3, H, W)`` sample images for the ``int8`` calibration (training images; 8-32 are
        enough); required for ``int8``.
    size:
        Side of the example input of the ONNX export (any multiple of the generator's ``multiple``).
    """
    if name not in ENGINES:
        raise ConfigError(f"engine {name!r}: choose one of {', '.join(ENGINES)}")
    threads = int(threads or torch.get_num_threads())
    gen = generator.float().cpu().eval()
    if name == "eager":
        def eager(images: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode():
                return gen(images)

        return eager
    folded = fold_batch_norm(gen)
    if name == "folded":
        def run_folded(images: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode():
                return folded(images)

        return run_folded
    if name in ("channels_last", "bf16", "compile", "bf16_compile"):
        cl = folded.to(memory_format=torch.channels_last)
        if name in ("compile", "bf16_compile"):
            try:
                # freezing: parameters become constants, so Inductor folds them and pre-packs the
                # convolution weights once (oneDNN's blocked layout) instead of at every call
                cl = torch.compile(cl, dynamic=False, options={"freezing": True})
            except Exception as exc:  # noqa: BLE001 - no compiler toolchain, unsupported platform
                raise ConfigError(f"engine {name!r} is unavailable here ({type(exc).__name__}: {exc})") from None
        dtype = torch.bfloat16 if name in ("bf16", "bf16_compile") else None

        def run_cl(images: torch.Tensor) -> torch.Tensor:
            x = images.contiguous(memory_format=torch.channels_last)
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype is not None):
                return cl(x).float().contiguous()

        return run_cl
    fp32 = _onnx_bytes(folded, size)
    if name == "onnxruntime":
        return _ort_engine(_ort_session(fp32, threads))
    # int8
    if calibration is None or len(calibration) == 0:
        raise ConfigError("engine 'int8' needs calibration images (training images of the model's system X)")
    return _ort_engine(_ort_session(_int8_bytes(fp32, calibration), threads))


def engine_available(name: str) -> str | None:
    """``None`` when engine ``name`` can run here, else the reason (a missing package or compiler)."""
    if name in ("onnxruntime", "int8"):
        try:
            import onnxruntime  # noqa: F401
        except ImportError as exc:
            return f"onnxruntime is not installed ({exc})"
    if name in ("compile", "bf16_compile"):
        import shutil

        if not any(shutil.which(c) for c in (os.environ.get("CXX", "g++"), "g++", "clang++", "c++")):
            return "torch.compile needs a C++ compiler (g++ or clang++) on PATH"
    if name in ("bf16", "bf16_compile") and not torch.backends.mkldnn.is_available():
        return "bf16 autocast on the CPU needs oneDNN (mkldnn)"
    return None


def with_engine(normalizer, name: str, *, threads: int | None = None, calibration: torch.Tensor | None = None):
    """Switch a fitted ccgan/pcnet ``normalizer`` to engine ``name`` (in place; returns it).

    The engine runs on the CPU; a normalizer on CUDA keeps its own path (bf16 autocast there is
    the preset's ``amp`` option). ``eager`` on any normalizer is a no-op, so callers may pass the
    option through unconditionally.
    """
    if name not in ENGINES:
        raise ConfigError(f"--engine {name!r}: choose one of {', '.join(ENGINES)}")
    gen = getattr(normalizer, "G_xy", None)
    if name == "eager":
        if gen is not None:
            normalizer.inference_engine = None
        return normalizer
    if gen is None:
        raise ConfigError(f"--engine {name}: engines apply to the networks (ccgan, pcnet); a "
                          f"{normalizer.name!r} model runs its own fast path (use --engine eager)")
    if next(gen.parameters()).device.type != "cpu":
        raise ConfigError(f"--engine {name}: the engines run on the CPU; use --device cpu")
    reason = engine_available(name)
    if reason:
        raise ConfigError(f"--engine {name}: {reason}")
    tile = int(getattr(getattr(normalizer, "config", None), "tile_size", 256) or 256)
    normalizer.inference_engine = build_engine(gen, name, threads=threads, calibration=calibration,
                                               size=max(gen.multiple, min(tile, 256)))
    normalizer.engine_name = name
    log.info("%s: inference engine %s", normalizer.name, name)
    return normalizer
