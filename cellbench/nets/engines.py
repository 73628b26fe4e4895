"""Inference engines for the U-Net generators (ccGAN, pcNet) on the CPU: same weights, faster runs.

==================  ====================================================================  =========
engine              what it does                                                          precision
==================  ====================================================================  =========
``eager``           the module as trained, under ``torch.inference_mode``                 fp32
``folded``          batch norm folded into the preceding (transposed) convolution:        fp32
                    ``w' = w * g / sqrt(v + eps)``, ``b' = (b - mu) g / sqrt(v + eps) + beta``
                    (Ioffe & Szegedy 2015, eq. of the inference-time transform)
``channels_last``   ``folded`` in NHWC memory format (oneDNN's preferred layout)          fp32
``onnxruntime``     ``folded`` exported to ONNX, run by ONNX Runtime with all graph       fp32
                    optimisations and ``threads`` intra-op threads
``compile``         ``folded`` + channels-last through ``torch.compile`` (Inductor,       fp32
                    ``freezing``: weights are constants, convolutions pre-packed)
``subpixel``        ``channels_last`` with each decoder's "nearest x2 upsampling ->       fp32
                    stride-1 k x k convolution rewritten as one convolution of the
                    low-resolution input into 4x the channels and a pixel shuffle
                    (exact; 2.8x fewer multiply-adds for the paper's 5x5 kernels;
                    :class:`SubpixelUNet`)
``bf16``            ``channels_last`` under ``torch.autocast("cpu", torch.bfloat16)``:    bf16
                    oneDNN runs the convolutions on AVX-512 BF16 / AMX units
``bf16_compile``    ``compile`` (with frozen, pre-packed weights) under bf16 autocast:    bf16
                    Inductor folds the casts into fused kernels and oneDNN keeps the
                    weights in its blocked bf16 layout between calls
``bf16_subpixel``   ``subpixel`` with bf16 weights and activations throughout (no casts   bf16
                    between layers; oneDNN's AMX / AVX-512 BF16 convolutions)
``int8``            ONNX Runtime static quantization (QDQ, per-channel int8 weights,      int8
                    uint8 activations) calibrated on sample images (MinMax)
==================  ====================================================================  =========

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

ENGINES = ("eager", "folded", "channels_last", "subpixel", "onnxruntime", "compile", "bf16", "bf16_subpixel",
           "bf16_compile", "int8")
#: engines whose output is computed in float32 (held to 1e-3 of eager)
FP32_ENGINES = ("eager", "folded", "channels_last", "subpixel", "onnxruntime", "compile")

__all__ = [
    "ENGINES",
    "FP32_ENGINES",
    "SubpixelUNet",
    "build_engine",
    "engine_available",
    "fold_batch_norm",
    "subpixel_conv",
    "with_engine",
]

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


def conv_of_transposed(ct: nn.ConvTranspose2d) -> nn.Conv2d:
    """The :class:`~torch.nn.Conv2d` computing the same map as a stride-1 transposed convolution
    (kernel flipped, input and output channels swapped, padding ``k - 1 - p``)."""
    if ct.stride != (1, 1) or ct.groups != 1 or ct.dilation != (1, 1) or ct.output_padding != (0, 0):
        raise ConfigError("only stride-1, ungrouped, undilated transposed convolutions convert to a convolution")
    k, p = ct.kernel_size, ct.padding
    conv = nn.Conv2d(ct.in_channels, ct.out_channels, k, padding=(k[0] - 1 - p[0], k[1] - 1 - p[1]),
                     bias=ct.bias is not None)
    with torch.no_grad():
        conv.weight.copy_(ct.weight.flip(2, 3).transpose(0, 1))
        if ct.bias is not None:
            conv.bias.copy_(ct.bias)
    return conv


def subpixel_conv(conv: nn.Conv2d) -> nn.Conv2d:
    """The convolution of the low-resolution input that, followed by ``pixel_shuffle(2)``, computes
    ``conv(upsample_nearest_x2(x))`` exactly (Aitken et al. 2017, "Checkerboard artifact free sub-pixel
    convolution": a resize-convolution is a sub-pixel convolution with tied weights; Shi et al. 2016).

    ``conv``: stride 1, odd square kernel ``k`` with padding ``p = k // 2``. Output pixel
    ``(2i + a, 2j + b)`` of the upsampled convolution sums taps ``u`` in ``[-p, p]`` over input rows
    ``i + floor((a + u) / 2)``, so each of the 4 phases ``(a, b)`` is a ``k' x k'`` convolution of the
    low-resolution input, ``k' = 2 ceil(p / 2) + 1`` (3 for k = 5: 4 * 9 / 25 = 0.36 of the multiply-adds
    per output pixel), whose weights are sums of the original taps (summed in float64). The phases
    are stacked as output channel ``4 c + 2 a + b``, pixel shuffle's order.
    """
    k, p = conv.kernel_size[0], conv.padding
    if (conv.kernel_size != (k, k) or k % 2 == 0 or p != (k // 2, k // 2) or conv.stride != (1, 1)
            or conv.groups != 1 or conv.dilation != (1, 1) or conv.padding_mode != "zeros"):
        raise ConfigError(
            "the sub-pixel rewrite needs a stride-1 convolution with an odd square kernel and padding k // 2"
        )
    p = k // 2
    lo = -((p + 1) // 2)  # floor(-p / 2): the lowest low-resolution offset a tap reaches
    size = 2 * ((p + 1) // 2) + 1
    w = conv.weight.detach().double()
    oc, ic = w.shape[:2]
    out = torch.zeros(oc, 2, 2, ic, size, size, dtype=torch.float64)
    for a in (0, 1):
        for u in range(-p, p + 1):
            dy = (a + u) // 2 - lo
            for b in (0, 1):
                for v in range(-p, p + 1):
                    out[:, a, b, :, dy, (b + v) // 2 - lo] += w[:, :, u + p, v + p]
    sub = nn.Conv2d(ic, 4 * oc, size, padding=-lo, bias=conv.bias is not None)
    with torch.no_grad():
        sub.weight.copy_(out.reshape(4 * oc, ic, size, size).to(conv.weight.dtype))
        if conv.bias is not None:
            sub.bias.copy_(conv.bias.detach().repeat_interleave(4))
    return sub


class _SubpixelUp(nn.Module):
    """``pixel_shuffle(conv(x), 2)``: a nearest x2 upsampling and a convolution, in one (:func:`subpixel_conv`)."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.conv = subpixel_conv(conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.pixel_shuffle(self.conv(x), 2)


class SubpixelUNet(nn.Module):
    """A batch-norm-folded :class:`~cellbench.nets.UNetGenerator` (:func:`fold_batch_norm`) with every
    decoder's "nearest x2 upsampling -> stride-1 transposed convolution" and the head's first
    convolution of the upsampled features computed as sub-pixel convolutions (:func:`subpixel_conv`)
    of the low-resolution features: the same function (to float rounding), without materialising
    any upsampled tensor and with 0.36 of the decoder's multiply-adds for 5x5 kernels.

    The head's input ``cat[up(h), x]`` (the input skip) is split by linearity of its first
    convolution: ``conv(cat[up(h), x]) = subpixel(conv_h)(h) + conv_x(x)``.
    """

    def __init__(self, folded: nn.Module) -> None:
        super().__init__()
        from .generator import DecoderBlock, UNetGenerator

        if not isinstance(folded, UNetGenerator):
            raise ConfigError(f"the sub-pixel engines apply to the U-Net generator, not {type(folded).__name__}")
        if any(isinstance(m, nn.BatchNorm2d) for m in folded.modules()):
            raise ConfigError("fold the batch norm first (fold_batch_norm)")
        ups = [m for m in folded.modules() if isinstance(m, nn.Upsample)]
        if any(m.mode != "nearest" or float(m.scale_factor) != 2.0 for m in ups):
            raise ConfigError("the sub-pixel engines need the generator's nearest x2 upsampling (upsample = 'nearest')")
        self.encoders = folded.encoders
        self.input_skip = folded.input_skip
        self.decoders = nn.ModuleList()
        for dec in folded.decoders:
            assert isinstance(dec, DecoderBlock) and isinstance(dec[0], nn.Upsample)
            self.decoders.append(nn.Sequential(_SubpixelUp(conv_of_transposed(dec[1])), *list(dec)[2:]))
        head = folded.head
        first, rest = (head, []) if isinstance(head, nn.ConvTranspose2d) else (head[0], list(head)[1:])
        conv = conv_of_transposed(first)
        n_skip = folded.encoders[0][0].in_channels if folded.input_skip else 0
        n_up = conv.in_channels - n_skip
        up_part = nn.Conv2d(n_up, conv.out_channels, conv.kernel_size, padding=conv.padding, bias=conv.bias is not None)
        with torch.no_grad():
            up_part.weight.copy_(conv.weight[:, :n_up])
            if conv.bias is not None:
                up_part.bias.copy_(conv.bias)
        self.head_up = _SubpixelUp(up_part)
        self.head_skip = None
        if n_skip:
            self.head_skip = nn.Conv2d(n_skip, conv.out_channels, conv.kernel_size, padding=conv.padding, bias=False)
            with torch.no_grad():
                self.head_skip.weight.copy_(conv.weight[:, n_up:])
        self.head_rest = nn.Sequential(*rest)
        self.multiple = folded.multiple

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """As :meth:`cellbench.nets.UNetGenerator.forward`, the final upsampling folded into the head."""
        from .generator import unet_trunk

        x = images * 2.0 - 1.0
        h = self.head_up(unet_trunk(self.encoders, self.decoders, x))
        if self.head_skip is not None:
            h = h + self.head_skip(x)
        return (torch.tanh(self.head_rest(h)) + 1.0) * 0.5


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
    if name in ("subpixel", "bf16_subpixel"):
        bf16 = name == "bf16_subpixel"
        sub = SubpixelUNet(folded).to(memory_format=torch.channels_last)
        if bf16:
            sub = sub.to(torch.bfloat16)

        dtype = torch.bfloat16 if bf16 else torch.float32

        def run_subpixel(images: torch.Tensor) -> torch.Tensor:
            x = images.to(dtype, memory_format=torch.channels_last)  # one copy: layout and precision
            with torch.inference_mode():
                return sub(x).float().contiguous()

        return run_subpixel
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
    if name in ("bf16", "bf16_compile", "bf16_subpixel") and not torch.backends.mkldnn.is_available():
        return "bf16 convolutions on the CPU need oneDNN (mkldnn)"
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
