"""A compiled CPU kernel for per-pixel networks (``pixelnet``'s 1x1 convolutions): the whole MLP in registers.

A StainNet-like network (:class:`cellbench.methods.distill.PixelNet`) maps each pixel's colour on
its own through a few fully connected layers (1x1 convolutions). Run layer by layer, every layer
writes ``hidden`` planes of floats to memory and the next reads them back, and the small matrix
products (``16 x 3`` times ``3 x P``) run far below the CPU's arithmetic peak: about 500 images/s
of 256x256 per core. Here one function computes the whole network for 16 pixels at a time, each
hidden activation a 16-lane vector in a register, each weight a broadcast scalar, each multiply-add
one fused instruction (``llvm.fma``); only the input colours are read and the output colours
written. The LLVM IR is generated for the network's widths (unrolled over units), compiled once per
architecture with ``llvmlite`` (as the 3D LUT kernel of :mod:`cellbench.nets.lut`), and run on
``threads`` threads with the GIL released.

Same arithmetic as the layers up to float rounding (the products are summed in another order and
fused); ``tests/test_distill.py`` holds the kernel to the network.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
from collections.abc import Sequence

import torch

from .lut import (
    OUTPUT_BUFFERS,
    VECTOR_WIDTH,
    emit_pixel_loops_close,
    emit_pixel_loops_open,
    kernel_jobs,
    output_plane_pointers,
    run_jobs,
)

log = logging.getLogger(__name__)
_W = VECTOR_WIDTH  # 16 float32 lanes per step, as the LUT kernel

__all__ = ["mlp_kernel_available", "apply_pixel_mlp"]


def _mlp_ir(widths: tuple[int, ...], residual: bool, name: str) -> str:
    """LLVM IR of ``void NAME(ptr x_0, i64 s_0, ..., ptr x_G-1, i64 s_G-1, ptr out, ptr params, i64 n,
    i64 plane, i64 start, i64 stop)``.

    The ``widths[0]`` input planes come in ``G = widths[0] / 3`` groups of three: group ``g``'s image
    ``i`` starts at ``x_g + i * s_g`` (floats) and holds three planes of ``plane`` floats, so one
    ``(N, 3G, H, W)`` tensor (``s_g = 3G * plane``) and ``G`` separate ``(N, 3, H, W)`` tensors
    (``s_g = 3 * plane``) both run without a copy. ``out`` holds ``n`` planar outputs ``(3, plane)``,
    float32; pixels ``[start, stop)`` of each image (a multiple of 16) are mapped.
    ``params`` holds, layer after layer, the weight matrix ``(out, in)`` row-major, then the bias
    ``(out,)``. ReLU after every layer but the last; with ``residual`` the first three input planes
    (the colour) are added to the output.
    """
    v = f"<{_W} x float>"
    lines: list[str] = []
    emit = lines.append
    fm = "contract"
    groups = widths[0] // 3
    args = ", ".join(f"ptr noalias nocapture readonly %x.g{g}, i64 %s.g{g}" for g in range(groups))
    emit(f"define void @{name}({args}, ptr noalias nocapture %out, "
         "ptr noalias nocapture readonly %params, i64 %n, i64 %plane, i64 %start, i64 %stop) {")
    emit("entry:")
    def splat(nm: str, offset: int) -> str:
        """Load ``params[offset]`` and broadcast it to a vector ``%nm``."""
        emit(f"  %{nm}.p = getelementptr float, ptr %params, i64 {offset}")
        emit(f"  %{nm}.s = load float, ptr %{nm}.p, align 4")
        emit(f"  %{nm}.0 = insertelement {v} poison, float %{nm}.s, i64 0")
        emit(f"  %{nm} = shufflevector {v} %{nm}.0, {v} poison, <{_W} x i32> zeroinitializer")
        return f"%{nm}"

    # every weight as a splat vector, once per call (the backend keeps them in registers or as
    # broadcast memory operands)
    offset = 0
    weights: list[tuple[list[list[str]], list[str]]] = []
    for layer, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        wmat = [[splat(f"w{layer}_{j}_{i}", offset + j * a + i) for i in range(a)] for j in range(b)]
        offset += a * b
        bias = [splat(f"b{layer}_{j}", offset + j) for j in range(b)]
        offset += b
        weights.append((wmat, bias))
    pointers = []
    for g in range(groups):
        pointers.append(f"  %off.g{g} = mul i64 %i, %s.g{g}")
        pointers.append(f"  %x{3 * g} = getelementptr float, ptr %x.g{g}, i64 %off.g{g}")
        pointers += [f"  %x{3 * g + c} = getelementptr float, ptr %x{3 * g + c - 1}, i64 %plane" for c in (1, 2)]
    emit_pixel_loops_open(emit, [*pointers, *output_plane_pointers("y", "012")])
    h = []
    for c in range(widths[0]):
        emit(f"  %in{c}.p = getelementptr float, ptr %x{c}, i64 %k")
        emit(f"  %in{c} = load {v}, ptr %in{c}.p, align 4")
        h.append(f"%in{c}")
    inputs = list(h)
    last = len(weights) - 1
    for layer, (wmat, bias) in enumerate(weights):
        nxt = []
        for j, row in enumerate(wmat):
            acc = bias[j]
            for i, wv in enumerate(row):
                nm = f"%a{layer}_{j}_{i}"
                emit(f"  {nm} = call {fm} {v} @llvm.fma.v{_W}f32({v} {wv}, {v} {h[i]}, {v} {acc})")
                acc = nm
            if layer < last:
                emit(f"  %h{layer}_{j} = call {v} @llvm.maxnum.v{_W}f32({v} {acc}, {v} zeroinitializer)")
                acc = f"%h{layer}_{j}"
            elif residual:
                emit(f"  %r{j} = fadd {v} {acc}, {inputs[j]}")
                acc = f"%r{j}"
            nxt.append(acc)
        h = nxt
    for c in range(3):
        emit(f"  %o{c}.p = getelementptr float, ptr %y{c}, i64 %k")
        emit(f"  store {v} {h[c]}, ptr %o{c}.p, align 4")
    emit_pixel_loops_close(emit)
    decls = [f"declare {v} @llvm.fma.v{_W}f32({v}, {v}, {v})", f"declare {v} @llvm.maxnum.v{_W}f32({v}, {v})"]
    return "\n".join(decls) + "\n" + "\n".join(lines) + "\n"


class _Compiled:
    """Kernels compiled per (widths, residual), kept for the process's life."""

    _lock = threading.Lock()
    _cache: dict[tuple, object] = {}
    _failed: str | None = None

    @classmethod
    def get(cls, widths: tuple[int, ...], residual: bool):
        key = (widths, residual)
        if key in cls._cache or cls._failed is not None:
            return cls._cache.get(key)
        with cls._lock:
            if key not in cls._cache and cls._failed is None:
                try:
                    cls._cache[key] = cls._build(widths, residual)
                except Exception as exc:  # noqa: BLE001 - any JIT problem falls back to torch
                    cls._failed = f"{type(exc).__name__}: {exc}"
                    log.warning("pixel-network kernel unavailable (%s); using torch", cls._failed)
        return cls._cache.get(key)

    @staticmethod
    def _build(widths: tuple[int, ...], residual: bool):
        if os.environ.get("CELLBENCH_NO_LUT_KERNEL") or os.environ.get("CELLBENCH_NO_PIXEL_KERNEL"):
            raise RuntimeError("disabled by CELLBENCH_NO_LUT_KERNEL / CELLBENCH_NO_PIXEL_KERNEL")
        import llvmlite.binding as llvm

        llvm.initialize_native_target()
        llvm.initialize_native_asmprinter()
        target = llvm.Target.from_default_triple()
        tm = target.create_target_machine(cpu=llvm.get_host_cpu_name(), features=llvm.get_host_cpu_features().flatten(),
                                          opt=3, codemodel="jitdefault")
        name = "pixel_mlp_" + "_".join(str(w) for w in widths) + ("_res" if residual else "")
        mod = llvm.parse_assembly(_mlp_ir(widths, residual, name))
        mod.verify()
        engine = llvm.create_mcjit_compiler(mod, tm)
        engine.finalize_object()
        proto = ctypes.CFUNCTYPE(None, *([ctypes.c_void_p, ctypes.c_int64] * (widths[0] // 3)), ctypes.c_void_p,
                                 ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64)
        return {"engine": engine, "module": mod, "tm": tm, "fn": proto(engine.get_function_address(name))}


#: widths beyond which the unrolled kernel stops paying (register pressure, IR size): torch runs those
MAX_KERNEL_UNITS = 64


def mlp_kernel_available(widths: tuple[int, ...], residual: bool = False) -> bool:
    """Whether the compiled kernel runs this architecture on this machine."""
    if widths[0] < 3 or widths[0] % 3 or widths[-1] != 3 or max(widths) > MAX_KERNEL_UNITS:
        return False
    return _Compiled.get(tuple(int(w) for w in widths), bool(residual)) is not None


def apply_pixel_mlp(images: torch.Tensor | Sequence[torch.Tensor], layers: list[tuple[torch.Tensor, torch.Tensor]], *,
                    residual: bool = False, threads: int | None = None,
                    out: torch.Tensor | None = None) -> torch.Tensor | None:
    """The per-pixel MLP ``layers`` (``[(weight (out, in), bias (out,)), ...]``, ReLU between) on CPU
    float32 inputs, giving ``(N, 3, H, W)``, through the compiled kernel; ``None`` when the kernel
    cannot run it (the caller falls back to torch).

    ``images``: one ``(N, C, H, W)`` tensor (``C = in`` of the first layer, a multiple of 3; the colour
    first), or a sequence of ``(N, 3, H, W)`` tensors whose planes, in order, are the inputs (read in
    place: no concatenated copy). With ``residual`` the first three planes are added to the output.
    Threads split the images (or, with fewer images than threads, each image's pixels); the last
    ``H*W % 16`` pixels of each image run in torch. ``out``: a contiguous float32 ``(N, 3, H, W)``
    tensor to write into (default: a pooled buffer).
    """
    parts = [images] if isinstance(images, torch.Tensor) else list(images)
    widths = tuple([int(layers[0][0].shape[1])] + [int(w.shape[0]) for w, _ in layers])
    if any(p.device.type != "cpu" or p.dtype != torch.float32 for p in parts) \
            or not mlp_kernel_available(widths, residual):
        return None
    parts = [p.contiguous() for p in parts]
    n, _, h, w = parts[0].shape
    if any(p.shape[0] != n or p.shape[2:] != parts[0].shape[2:] for p in parts):
        raise ValueError("apply_pixel_mlp: the input tensors differ in images or size")
    cin = sum(int(p.shape[1]) for p in parts)
    if cin != widths[0] or any(p.shape[1] % 3 for p in parts):
        raise ValueError(f"apply_pixel_mlp: {cin} input planes (in groups of 3) for a first layer of "
                         f"{widths[0]} inputs")
    kern = _Compiled.get(widths, residual)
    plane = h * w
    groups = []  # (pointer, image stride in floats) per group of three planes
    for p in parts:
        c = int(p.shape[1])
        groups += [(p.data_ptr() + 4 * 3 * k * plane, c * plane) for k in range(c // 3)]
    params = torch.cat([t.detach().float().reshape(-1) for pair in layers for t in pair]).contiguous()
    if out is None:
        out = OUTPUT_BUFFERS.empty((n, 3, h, w))  # pooled: a fresh 50 MB output costs page faults (nets/lut.py)
    elif out.shape != (n, 3, h, w) or out.dtype != torch.float32 or not out.is_contiguous():
        raise ValueError(f"apply_pixel_mlp: out must be a contiguous float32 tensor of shape {(n, 3, h, w)}")
    fn = kern["fn"]
    full = plane - plane % _W
    threads = max(1, int(threads or torch.get_num_threads()))
    op, pp = out.data_ptr(), params.data_ptr()

    def call(first: int, count: int, a: int, b: int) -> None:
        ins = [v for ptr, stride in groups for v in (ptr + 4 * first * stride, stride)]
        fn(*ins, op + first * 3 * plane * 4, pp, count, plane, a, b)

    run_jobs(call, kernel_jobs(n, plane, threads), threads)
    if full < plane:  # the tail of each image, in torch
        t = torch.cat([p.reshape(n, int(p.shape[1]), plane)[:, :, full:] for p in parts], 1)
        hcur = t
        for k, (wk, bk) in enumerate(layers):
            hcur = torch.einsum("oi,nip->nop", wk.detach().float(), hcur) + bk.detach().float()[None, :, None]
            if k < len(layers) - 1:
                hcur = hcur.clamp_min(0)
        out.reshape(n, 3, plane)[:, :, full:] = hcur + t[:, :3] if residual else hcur
    del params, parts  # kept alive until every job has finished (above)
    return out
