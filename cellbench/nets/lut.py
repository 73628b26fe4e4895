"""3D colour lookup tables: interpolation, a fast CPU kernel, least-squares fitting, ``.cube`` files.

A 3D LUT of size ``m`` samples a colour map ``f: [0, 1]^3 -> [0, 1]^3`` on the regular lattice
``(i, j, k) / (m - 1)``; between lattice points the map is interpolated:

* **trilinear**: the 8 corners of the enclosing cell, weighted by the products of the fractional
  coordinates;
* **tetrahedral**: the cell is split into 6 tetrahedra along its main diagonal; the 4 corners of
  the one that holds the point are weighted by the sorted fractions (``1 - f_max``,
  ``f_max - f_mid``, ``f_mid - f_min``, ``f_min``). Half the lookups of trilinear, and it
  reproduces a map that is linear along the grey axis exactly (Kasson, Nin, Plouffe & Hafner,
  "Performing color space conversions with three-dimensional linear interpolation", J. Electronic
  Imaging 4(3), 1995).

Layout: a LUT is a ``float32`` tensor ``(3, m, m, m)`` indexed ``[channel, b, g, r]``, so red varies
fastest in memory, as in the ``.cube`` text format (Adobe "Cube LUT Specification" 1.0, 2013:
``LUT_3D_SIZE N`` then ``N^3`` lines ``R G B`` with red changing fastest), and it is the
``(C, D, H, W)`` volume that :func:`torch.nn.functional.grid_sample` samples with grid ``(r, g, b)``.

Three implementations of one transform (tests hold them together):

* :func:`apply_lut_reference`: ``grid_sample`` (trilinear) or gathers (tetrahedral) in torch, any
  device; the test oracle and the CUDA path;
* :func:`apply_lut`: a CPU kernel written in LLVM IR (16-wide vectors, hardware gathers where the
  CPU has them: AVX-512/AVX2) compiled once per process with ``llvmlite``, run on ``torch``'s
  intra-op thread count with the GIL released; falls back to the reference when ``llvmlite`` is
  missing or the input is not a CPU float32 tensor;
* :func:`fit_lut`: regularised least squares, ``min_v sum_p n_p |A_p v - y_p|^2 + lambda |D2 v|^2``,
  where ``A_p`` holds pixel ``p``'s interpolation weights, so the fitted table is optimal for the
  interpolation used at inference, and ``D2`` the second differences along the three lattice axes:
  a smoothness prior that fills cells with few or no training colours (Zeng, Cai, Li, Cao & Zhang,
  "Learning Image-adaptive 3D Lookup Tables for High Performance Photo Enhancement in Real-time",
  IEEE TPAMI 44(4), 2020, eq. (6): their smoothness regulariser; here second instead of first
  differences so that empty regions continue the map's slope rather than flatten it).
"""

from __future__ import annotations

import ctypes
import logging
import math
import os
import threading
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..fs import atomic_write

log = logging.getLogger(__name__)

INTERPOLATIONS = ("tetrahedral", "trilinear")

__all__ = [
    "INTERPOLATIONS", "identity_lut", "interp_weights", "apply_lut_reference", "apply_lut", "fit_lut",
    "colour_histogram", "write_cube", "read_cube", "kernel_available",
]


def identity_lut(size: int) -> torch.Tensor:
    """The identity map as a ``(3, m, m, m)`` LUT (``lut[c, b, g, r]``)."""
    t = torch.linspace(0.0, 1.0, size)
    b, g, r = torch.meshgrid(t, t, t, indexing="ij")
    return torch.stack([r, g, b]).contiguous()


def _check_interp(interpolation: str) -> None:
    if interpolation not in INTERPOLATIONS:
        raise ConfigError(f"interpolation={interpolation!r}: choose one of {', '.join(INTERPOLATIONS)}")


def interp_weights(px: torch.Tensor, size: int, interpolation: str = "tetrahedral"
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Lattice nodes and weights of each colour: ``px`` ``(P, 3)`` RGB in [0, 1] (clamped).

    Returns ``idx`` ``(P, K)`` int64 flat node indices ``r + m g + m^2 b`` and ``w`` ``(P, K)``
    weights (same dtype as ``px``, summing to 1); ``K`` is 4 (tetrahedral) or 8 (trilinear).
    """
    _check_interp(interpolation)
    m = int(size)
    s = px.clamp(0.0, 1.0) * (m - 1)
    i = s.floor().clamp_(max=m - 2)
    f = s - i
    i = i.long()
    base = i[:, 0] + m * i[:, 1] + m * m * i[:, 2]
    step = torch.tensor([1, m, m * m], device=px.device)
    if interpolation == "trilinear":
        idx, w = [], []
        for corner in range(8):
            bits = torch.tensor([(corner >> c) & 1 for c in range(3)], device=px.device)
            idx.append(base + int((bits * step).sum()))
            w.append(torch.where(bits.bool(), f, 1 - f).prod(dim=1))
        return torch.stack(idx, 1), torch.stack(w, 1)
    # tetrahedral: walk from the cell's origin along the axes in order of decreasing fraction
    fs, order = f.sort(dim=1, descending=True, stable=True)
    o1 = step[order[:, 0]]
    o2 = o1 + step[order[:, 1]]
    o3 = int(step.sum())
    idx = torch.stack([base, base + o1, base + o2, base + o3], 1)
    w = torch.stack([1 - fs[:, 0], fs[:, 0] - fs[:, 1], fs[:, 1] - fs[:, 2], fs[:, 2]], 1)
    return idx, w


def apply_lut_reference(images: torch.Tensor, lut: torch.Tensor, interpolation: str = "tetrahedral"
                        ) -> torch.Tensor:
    """Apply ``lut`` ``(3, m, m, m)`` to ``(N, 3, H, W)`` images in [0, 1] with plain torch ops.

    Trilinear uses :func:`torch.nn.functional.grid_sample` (``align_corners=True``: lattice node
    ``k`` sits at colour ``k / (m - 1)``); tetrahedral gathers the 4 corners of
    :func:`interp_weights`. Runs on the images' device.
    """
    _check_interp(interpolation)
    n, _, h, w = images.shape
    lut = lut.to(images.device, torch.float32)
    x = images.float().clamp(0.0, 1.0)
    if interpolation == "trilinear":
        grid = x.permute(0, 2, 3, 1).reshape(1, n, h * w, 1, 3) * 2.0 - 1.0  # (x, y, z) = (r, g, b)
        out = F.grid_sample(lut[None], grid, mode="bilinear", padding_mode="border", align_corners=True)
        return out.reshape(3, n, h, w).permute(1, 0, 2, 3).contiguous()
    idx, wt = interp_weights(x.permute(0, 2, 3, 1).reshape(-1, 3), lut.shape[-1], interpolation)
    flat = lut.reshape(3, -1)
    out = (flat[:, idx] * wt[None]).sum(-1)  # (3, P)
    return out.reshape(3, n, h, w).permute(1, 0, 2, 3).contiguous()


# -- the CPU kernel ------------------------------------------------------------------------------
_W = 16  # vector width (pixels per step): one AVX-512 register of float32, two of AVX2


def _kernel_ir(interpolation: str) -> str:
    """LLVM IR of ``void lut_<interp>(ptr x, ptr out, ptr lut, i64 n, i64 plane, i64 start, i64 stop, i64 m)``.

    ``x`` and ``out`` are ``n`` planar images ``(3, plane)`` (float32, contiguous); pixels
    ``[start, stop)`` of each image are mapped (``stop - start`` a multiple of 16); ``lut`` is
    ``(3, m^3)`` float32. Every value is a 16-lane vector; the lattice reads are gathers.
    """
    v, vi, vb = f"<{_W} x float>", f"<{_W} x i32>", f"<{_W} x i1>"
    lines: list[str] = []
    emit = lines.append

    def splat_f(name: str, val: str) -> None:
        emit(f"  %{name}.0 = insertelement {v} poison, float {val}, i64 0")
        emit(f"  %{name} = shufflevector {v} %{name}.0, {v} poison, {vi} zeroinitializer")

    def splat_i(name: str, val: str) -> None:
        emit(f"  %{name}.0 = insertelement {vi} poison, i32 {val}, i64 0")
        emit(f"  %{name} = shufflevector {vi} %{name}.0, {vi} poison, {vi} zeroinitializer")

    def gather(name: str, base_ptr: str, idx: str) -> None:
        emit(f"  %{name}.p = getelementptr float, ptr {base_ptr}, {vi} {idx}")
        emit(f"  %{name} = call {v} @llvm.masked.gather.v{_W}f32.v{_W}p0(<{_W} x ptr> %{name}.p, i32 4, "
             f"{vb} splat (i1 true), {v} poison)")

    fm = "fast"
    name = f"lut_{interpolation}"
    emit(f"define void @{name}(ptr noalias nocapture readonly %x, ptr noalias nocapture %out, "
         "ptr noalias nocapture readonly %lut, i64 %n, i64 %plane, i64 %start, i64 %stop, i64 %m) {")
    emit("entry:")
    emit("  %m32 = trunc i64 %m to i32")
    emit("  %mm32 = mul i32 %m32, %m32")
    emit("  %m3 = mul i64 %m, %m")
    emit("  %m3b = mul i64 %m3, %m")
    emit("  %lutr = getelementptr float, ptr %lut, i64 0")
    emit("  %lutg = getelementptr float, ptr %lut, i64 %m3b")
    emit("  %lutb = getelementptr float, ptr %lutg, i64 %m3b")
    emit("  %mm1 = sub i32 %m32, 1")
    emit("  %mm2 = sub i32 %m32, 2")
    emit("  %scale = sitofp i32 %mm1 to float")
    splat_f("vs", "%scale")
    splat_i("vhi", "%mm2")
    splat_i("vm", "%m32")
    splat_i("vmm", "%mm32")
    emit_pixel_loops_open(emit, [
        "  %xr = getelementptr float, ptr %x, i64 %off",
        "  %xg = getelementptr float, ptr %xr, i64 %plane",
        "  %xb = getelementptr float, ptr %xg, i64 %plane",
        *output_plane_pointers("y", "rgb"),
    ])
    fr = {}
    for c in "rgb":
        emit(f"  %p{c} = getelementptr float, ptr %x{c}, i64 %k")
        emit(f"  %l{c} = load {v}, ptr %p{c}, align 4")
        emit(f"  %a{c} = call {fm} {v} @llvm.maxnum.v{_W}f32({v} %l{c}, {v} zeroinitializer)")
        emit(f"  %b{c} = call {fm} {v} @llvm.minnum.v{_W}f32({v} %a{c}, {v} splat (float 1.0))")
        emit(f"  %s{c} = fmul {fm} {v} %b{c}, %vs")
        emit(f"  %t{c} = fptosi {v} %s{c} to {vi}")
        emit(f"  %u{c} = icmp slt {vi} %t{c}, %vhi")
        emit(f"  %i{c} = select {vb} %u{c}, {vi} %t{c}, {vi} %vhi")
        emit(f"  %j{c} = sitofp {vi} %i{c} to {v}")
        emit(f"  %f{c} = fsub {fm} {v} %s{c}, %j{c}")
        fr[c] = f"%f{c}"
    emit(f"  %gm = mul {vi} %ig, %vm")
    emit(f"  %bm = mul {vi} %ib, %vmm")
    emit(f"  %base0 = add {vi} %ir, %gm")
    emit(f"  %base = add {vi} %base0, %bm")
    # corner offsets: r -> 1, g -> m, b -> m^2
    emit(f"  %sall0 = add {vi} %vm, %vmm")
    emit(f"  %sall = add {vi} %sall0, splat (i32 1)")
    outs = {}
    if interpolation == "tetrahedral":
        emit(f"  %rg = fcmp oge {v} %fr, %fg")
        emit(f"  %gb = fcmp oge {v} %fg, %fb")
        emit(f"  %rb = fcmp oge {v} %fr, %fb")
        emit(f"  %nrg = xor {vb} %rg, splat (i1 true)")
        emit(f"  %nrb = xor {vb} %rb, splat (i1 true)")
        emit(f"  %mx0 = call {fm} {v} @llvm.maxnum.v{_W}f32({v} %fg, {v} %fb)")
        emit(f"  %hi = call {fm} {v} @llvm.maxnum.v{_W}f32({v} %fr, {v} %mx0)")
        emit(f"  %mn0 = call {fm} {v} @llvm.minnum.v{_W}f32({v} %fg, {v} %fb)")
        emit(f"  %lo = call {fm} {v} @llvm.minnum.v{_W}f32({v} %fr, {v} %mn0)")
        emit(f"  %sum0 = fadd {fm} {v} %fr, %fg")
        emit(f"  %sum = fadd {fm} {v} %sum0, %fb")
        emit(f"  %sum1 = fsub {fm} {v} %sum, %hi")
        emit(f"  %mid = fsub {fm} {v} %sum1, %lo")
        # first step: along the axis of the largest fraction
        emit(f"  %rmax = and {vb} %rg, %rb")
        emit(f"  %gmax = and {vb} %gb, %nrg")
        emit(f"  %o1a = select {vb} %gmax, {vi} %vm, {vi} %vmm")
        emit(f"  %o1 = select {vb} %rmax, {vi} splat (i32 1), {vi} %o1a")
        # second corner: all axes but the one of the smallest fraction
        emit(f"  %bmin = and {vb} %gb, %rb")
        emit(f"  %rmin = and {vb} %nrg, %nrb")
        emit(f"  %sma = select {vb} %rmin, {vi} splat (i32 1), {vi} %vm")
        emit(f"  %smin = select {vb} %bmin, {vi} %vmm, {vi} %sma")
        emit(f"  %o2 = sub {vi} %sall, %smin")
        emit(f"  %w0 = fsub {fm} {v} splat (float 1.0), %hi")
        emit(f"  %w1 = fsub {fm} {v} %hi, %mid")
        emit(f"  %w2 = fsub {fm} {v} %mid, %lo")
        emit(f"  %i1 = add {vi} %base, %o1")
        emit(f"  %i2 = add {vi} %base, %o2")
        emit(f"  %i3 = add {vi} %base, %sall")
        for c in "rgb":
            for q, idx in enumerate(("%base", "%i1", "%i2", "%i3")):
                gather(f"g{c}{q}", f"%lut{c}", idx)
            emit(f"  %m{c}0 = fmul {fm} {v} %w0, %g{c}0")
            emit(f"  %m{c}1 = fmul {fm} {v} %w1, %g{c}1")
            emit(f"  %m{c}2 = fmul {fm} {v} %w2, %g{c}2")
            emit(f"  %m{c}3 = fmul {fm} {v} %lo, %g{c}3")
            emit(f"  %n{c}0 = fadd {fm} {v} %m{c}0, %m{c}1")
            emit(f"  %n{c}1 = fadd {fm} {v} %m{c}2, %m{c}3")
            emit(f"  %o{c} = fadd {fm} {v} %n{c}0, %n{c}1")
            outs[c] = f"%o{c}"
    else:  # trilinear: lerp along r, then g, then b
        steps = {"r": "splat (i32 1)", "g": "%vm", "b": "%vmm"}
        corners = {}
        for corner in range(8):
            parts = [c for bit, c in enumerate("rgb") if (corner >> bit) & 1]
            cur = "%base"
            for j, c in enumerate(parts):
                emit(f"  %c{corner}.{j} = add {vi} {cur}, {steps[c]}")
                cur = f"%c{corner}.{j}"
            corners[corner] = cur
        for c in "rgb":
            for corner in range(8):
                gather(f"h{c}{corner}", f"%lut{c}", corners[corner])

            def lerp(name: str, a: str, b: str, f: str) -> str:
                emit(f"  %{name}.d = fsub {fm} {v} {b}, {a}")
                emit(f"  %{name}.m = fmul {fm} {v} %{name}.d, {f}")
                emit(f"  %{name} = fadd {fm} {v} {a}, %{name}.m")
                return f"%{name}"

            e = {q: lerp(f"e{c}{q}", f"%h{c}{q}", f"%h{c}{q + 1}", "%fr") for q in (0, 2, 4, 6)}
            g0 = lerp(f"q{c}0", e[0], e[2], "%fg")
            g1 = lerp(f"q{c}1", e[4], e[6], "%fg")
            outs[c] = lerp(f"z{c}", g0, g1, "%fb")
    for c in "rgb":  # clamp: rounding must not push a convex combination of [0, 1] values outside
        emit(f"  %cl{c} = call {fm} {v} @llvm.maxnum.v{_W}f32({v} {outs[c]}, {v} zeroinitializer)")
        emit(f"  %cm{c} = call {fm} {v} @llvm.minnum.v{_W}f32({v} %cl{c}, {v} splat (float 1.0))")
        emit(f"  %d{c} = getelementptr float, ptr %y{c}, i64 %k")
        emit(f"  store {v} %cm{c}, ptr %d{c}, align 4")
    emit_pixel_loops_close(emit)
    return "\n".join(lines) + "\n"


def output_plane_pointers(prefix: str, names: str | Sequence[str]) -> list[str]:
    """IR lines of the three output plane pointers of image ``i``: ``%<prefix><name>`` at ``out + off``,
    then one ``plane`` further each."""
    first = f"%{prefix}{names[0]}"
    out = [f"  {first} = getelementptr float, ptr %out, i64 %off"]
    for prev, name in zip(names[:-1], names[1:], strict=True):
        out.append(f"  %{prefix}{name} = getelementptr float, ptr %{prefix}{prev}, i64 %plane")
    return out


def emit_pixel_loops_open(emit: Callable[[str], None], image_pointers: Sequence[str]) -> None:
    """Open the two loops of a per-pixel kernel (the LUT's and :mod:`cellbench.nets.pixel_kernel`'s):
    images ``%i`` in ``[0, %n)``, then pixels ``%k`` in ``[%start, %stop)`` in steps of
    :data:`VECTOR_WIDTH`, ending in block ``px.body``. ``image_pointers`` are the IR lines that set the
    image's plane pointers, after ``%off = %i * 3 * %plane`` (the planar image's offset)."""
    emit("  %stride = mul i64 %plane, 3")
    emit("  br label %img")
    emit("img:")
    emit("  %i = phi i64 [ 0, %entry ], [ %i.next, %img.end ]")
    emit("  %more = icmp slt i64 %i, %n")
    emit("  br i1 %more, label %img.body, label %exit")
    emit("img.body:")
    emit("  %off = mul i64 %i, %stride")
    for line in image_pointers:
        emit(line)
    emit("  br label %px")
    emit("px:")
    emit("  %k = phi i64 [ %start, %img.body ], [ %k.next, %px.body ]")
    emit("  %pmore = icmp slt i64 %k, %stop")
    emit("  br i1 %pmore, label %px.body, label %img.end")
    emit("px.body:")


def emit_pixel_loops_close(emit: Callable[[str], None]) -> None:
    """Close :func:`emit_pixel_loops_open`'s loops and the function."""
    emit(f"  %k.next = add i64 %k, {_W}")
    emit("  br label %px")
    emit("img.end:")
    emit("  %i.next = add i64 %i, 1")
    emit("  br label %img")
    emit("exit:")
    emit("  ret void")
    emit("}")


def _kernel_module_ir() -> str:
    """Both kernels and the intrinsics they call, as one module."""
    v, vb = f"<{_W} x float>", f"<{_W} x i1>"
    decls = [
        f"declare {v} @llvm.maxnum.v{_W}f32({v}, {v})",
        f"declare {v} @llvm.minnum.v{_W}f32({v}, {v})",
        f"declare {v} @llvm.masked.gather.v{_W}f32.v{_W}p0(<{_W} x ptr>, i32 immarg, {vb}, {v})",
    ]
    return "\n".join(decls) + "\n" + "\n".join(_kernel_ir(k) for k in INTERPOLATIONS)


class _Kernel:
    """The compiled LLVM kernels (one per interpolation), built on first use."""

    _lock = threading.Lock()
    _state: dict | None = None
    _failed: str | None = None

    @classmethod
    def get(cls) -> dict | None:
        if cls._state is not None or cls._failed is not None:
            return cls._state
        with cls._lock:
            if cls._state is None and cls._failed is None:
                try:
                    cls._state = cls._build()
                except Exception as exc:  # noqa: BLE001 - any JIT problem falls back to torch
                    cls._failed = f"{type(exc).__name__}: {exc}"
                    log.warning("3D LUT kernel unavailable (%s); using the torch implementation", cls._failed)
        return cls._state

    @staticmethod
    def _build() -> dict:
        if os.environ.get("CELLBENCH_NO_LUT_KERNEL"):
            raise RuntimeError("disabled by CELLBENCH_NO_LUT_KERNEL")
        import llvmlite.binding as llvm

        llvm.initialize_native_target()
        llvm.initialize_native_asmprinter()
        target = llvm.Target.from_default_triple()
        tm = target.create_target_machine(cpu=llvm.get_host_cpu_name(), features=llvm.get_host_cpu_features().flatten(),
                                          opt=3, codemodel="jitdefault")
        mod = llvm.parse_assembly(_kernel_module_ir())
        mod.verify()
        engine = llvm.create_mcjit_compiler(mod, tm)
        engine.finalize_object()
        proto = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                 ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64)
        fns = {k: proto(engine.get_function_address(f"lut_{k}")) for k in INTERPOLATIONS}
        return {"engine": engine, "module": mod, "tm": tm, "fns": fns}


class OutputBuffers:
    """Reusable float32 output buffers for a transform called again and again on same-sized batches.

    A fresh 50 MB output (64 images of 256x256) costs more in page faults than the LUT lookups
    that fill it (the allocator returns large blocks to the OS on free, so every call faults and
    zeroes new pages). :meth:`empty` hands out a tensor over a pooled buffer; the buffer returns to
    the pool only when every tensor and view over it has been freed (a finalizer on the NumPy
    array the tensor holds), so a caller can never see its result overwritten. At most
    ``max_bytes`` of idle buffers are kept.
    """

    def __init__(self, max_bytes: int = 512 * 2**20) -> None:
        self.max_bytes = int(max_bytes)
        self._free: dict[int, list[np.ndarray]] = {}
        self._idle = 0
        self._lock = threading.Lock()

    def empty(self, shape: tuple[int, ...]) -> torch.Tensor:
        count = int(np.prod(shape))
        with self._lock:
            stack = self._free.get(count)
            buf = stack.pop() if stack else None
            if buf is not None:
                self._idle -= buf.nbytes
        if buf is None:
            buf = np.empty(count, dtype=np.float32)
        view = buf.view()
        weakref.finalize(view, self._release, buf)
        return torch.from_numpy(view).view(shape)

    def _release(self, buf: np.ndarray) -> None:
        with self._lock:
            if self._idle + buf.nbytes <= self.max_bytes:
                self._free.setdefault(buf.size, []).append(buf)
                self._idle += buf.nbytes


_BUFFERS = OutputBuffers()
_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _pool(workers: int) -> ThreadPoolExecutor:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None or _POOL._max_workers < workers:
            _POOL = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cellbench-lut")
        return _POOL


#: shared with the pixel-network kernel (:mod:`cellbench.nets.pixel_kernel`): the vector width and the
#: pooled output buffers of the compiled kernels
VECTOR_WIDTH = _W
OUTPUT_BUFFERS = _BUFFERS


def kernel_jobs(n: int, plane: int, threads: int) -> list[tuple[int, int, int, int]]:
    """How the compiled kernels split ``n`` images of ``plane`` pixels among ``threads``: jobs
    ``(first image, images, start, stop)`` over the vector-aligned pixels ``[0, plane - plane % 16)``,
    by images, or by pixel ranges of each image when there are fewer images than threads."""
    full = plane - plane % _W
    if not full:
        return []
    if n >= threads:
        bounds = np.linspace(0, n, min(threads, n) + 1).round().astype(int)
        return [(int(a), int(b - a), 0, full) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]
    cuts = np.linspace(0, full // _W, threads + 1).round().astype(int) * _W
    return [(i, 1, int(a), int(b)) for i in range(n) for a, b in zip(cuts[:-1], cuts[1:], strict=True) if b > a]


def run_jobs(fn: Callable[..., Any], jobs: list[tuple], threads: int) -> None:
    """``fn(*job)`` for every job: in this thread when there is one job or one thread, else on the
    process's kernel thread pool (the calls release the GIL: compiled kernels, torch operations)."""
    if len(jobs) <= 1 or threads <= 1:
        for job in jobs:
            fn(*job)
        return
    pool = _pool(threads)
    for f in [pool.submit(fn, *job) for job in jobs]:
        f.result()


def kernel_available() -> bool:
    """Whether the compiled CPU kernel can be used (else :func:`apply_lut` runs the torch reference)."""
    return _Kernel.get() is not None


def apply_lut(images: torch.Tensor, lut: torch.Tensor, interpolation: str = "tetrahedral", *,
              out: torch.Tensor | None = None, threads: int | None = None) -> torch.Tensor:
    """Apply ``lut`` ``(3, m, m, m)`` to ``(N, 3, H, W)`` images in [0, 1]; the fast path of the transform.

    CPU float32 input runs the compiled kernel on ``threads`` threads (default: torch's intra-op
    thread count), split over images (or over pixels when there are fewer images than threads);
    other inputs, or no kernel, run :func:`apply_lut_reference`. Inputs are clamped to [0, 1].
    ``out``, if given, receives the result (a contiguous float32 tensor of the input's shape).
    """
    _check_interp(interpolation)
    kern = _Kernel.get() if images.device.type == "cpu" else None
    if kern is None or images.dtype != torch.float32:
        res = apply_lut_reference(images, lut, interpolation)
        return res if out is None else out.copy_(res)
    x = images.contiguous()
    n, _, h, w = x.shape
    plane = h * w
    table = lut.detach().to("cpu", torch.float32).contiguous()
    m = int(table.shape[-1])
    if out is None:
        out = _BUFFERS.empty(tuple(x.shape))
    fn = kern["fns"][interpolation]
    full = plane - plane % _W
    threads = max(1, int(threads or torch.get_num_threads()))
    xp, op, lp = x.data_ptr(), out.data_ptr(), table.data_ptr()

    def call(first: int, count: int, a: int, b: int) -> None:
        fn(xp + first * 3 * plane * 4, op + first * 3 * plane * 4, lp, count, plane, a, b, m)

    run_jobs(call, kernel_jobs(n, plane, threads), threads)
    if full < plane:  # the last plane % 16 pixels of each image
        tail = x.reshape(n, 3, plane)[:, :, full:].reshape(n, 3, 1, plane - full)
        out.reshape(n, 3, plane)[:, :, full:] = apply_lut_reference(tail, table, interpolation).reshape(n, 3, -1)
    return out


# -- fitting -------------------------------------------------------------------------------------
def colour_histogram(images: torch.Tensor, targets: torch.Tensor, *, bits: int = 7, chunk: int = 32
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Aggregate corresponding pixels by input colour: ``(x_mean, y_mean, count)`` per occupied bin.

    ``images`` and ``targets`` are ``(N, 3, H, W)`` in [0, 1]; input colours are binned on a
    ``2^bits``-level grid per channel (7 bits: a quarter of a 33^3 lattice cell), and each bin
    keeps the mean input colour, the mean target colour and the pixel count (arrays ``(B, 3)``,
    ``(B, 3)``, ``(B,)`` over the ``B`` occupied bins, in key order). A least-squares fit on the
    bins weighted by their counts equals the fit on all pixels up to the colour spread inside a
    bin (the interpolant is nearly linear across 1/127), and costs a fraction of it: 640 simulated
    256x256 images (42 M pixels) hold about 500,000 distinct 8-bit colours, 150,000 7-bit bins.
    """
    levels = 1 << bits
    keys = []
    for s in range(0, len(images), chunk):
        x = images[s:s + chunk].detach().float().cpu()
        q = (x.clamp(0, 1) * (levels - 1) + 0.5).to(torch.int32)
        keys.append((q[:, 0] + levels * q[:, 1] + (levels * levels) * q[:, 2]).reshape(-1).numpy())
    key = np.concatenate(keys)
    del keys
    occupied = np.bincount(key, minlength=levels**3) > 0
    compact = np.cumsum(occupied, dtype=np.int64) - 1  # key -> bin number
    bins = compact[key]
    del key
    nb = int(occupied.sum())
    cnt = np.bincount(bins, minlength=nb).astype(np.float64)
    xm = np.empty((nb, 3))
    ym = np.empty((nb, 3))
    for c in range(3):
        xc = images[:, c].detach().float().cpu().reshape(-1).numpy()
        yc = targets[:, c].detach().float().cpu().reshape(-1).numpy()
        xm[:, c] = np.bincount(bins, weights=xc, minlength=nb) / cnt
        ym[:, c] = np.bincount(bins, weights=yc, minlength=nb) / cnt
    return xm, ym, cnt


def _second_differences(m: int):
    """``D2`` of the smoothness prior: second differences along r, g and b, stacked (sparse)."""
    import scipy.sparse as sp

    d2 = sp.diags([np.ones(m - 2), -2 * np.ones(m - 2), np.ones(m - 2)], [0, 1, 2], shape=(m - 2, m))
    eye = sp.identity(m, format="csr")
    # flat index r + m g + m^2 b: kron(B, kron(G, R))
    return sp.vstack([sp.kron(eye, sp.kron(eye, d2)), sp.kron(eye, sp.kron(d2, eye)), sp.kron(d2, sp.kron(eye, eye))]
                     ).tocsr()


def _normal_equations(x: torch.Tensor, y: np.ndarray, wts: np.ndarray, m: int, interpolation: str,
                      smoothness: float, ridge: float):
    """The sparse system ``(A^T W A + s D2^T D2 / m^3 + r I) v = A^T W y + r v_id`` of :func:`fit_lut`."""
    import scipy.sparse as sp

    idx, w = interp_weights(x, m, interpolation)
    idx, w = idx.numpy(), w.numpy()
    k = idx.shape[1]
    nodes = m**3
    rows = np.repeat(idx, k, axis=1).ravel()
    cols = np.tile(idx, (1, k)).ravel()
    vals = (w[:, :, None] * w[:, None, :] * wts[:, None, None]).ravel()
    ata = sp.coo_matrix((vals, (rows, cols)), shape=(nodes, nodes)).tocsr()
    d2 = _second_differences(m)
    system = (ata + (float(smoothness) / nodes) * (d2.T @ d2) + float(ridge) * sp.identity(nodes)).tocsr()
    ident = identity_lut(m).reshape(3, -1).double().numpy()
    rhs = np.stack([np.bincount(idx.ravel(), weights=(w * (wts * y[:, c])[:, None]).ravel(), minlength=nodes)
                    for c in range(3)], 1) + float(ridge) * ident.T
    return system, rhs


def _resample(v: np.ndarray, m0: int, m1: int) -> np.ndarray:
    """Nodes ``(m0^3, 3)`` of a LUT -> ``(m1^3, 3)`` by trilinear interpolation of the lattice."""
    t = torch.from_numpy(np.ascontiguousarray(v.T)).reshape(1, 3, m0, m0, m0)
    up = F.interpolate(t, size=(m1, m1, m1), mode="trilinear", align_corners=True)
    return up.reshape(3, -1).numpy().T


def fit_lut(x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor, *, size: int = 33,
            interpolation: str = "tetrahedral", smoothness: float = 1e-4, weights: np.ndarray | None = None,
            ridge: float = 1e-9, rtol: float = 1e-6, maxiter: int = 1000) -> torch.Tensor:
    """Fit a ``(3, m, m, m)`` LUT to colours ``x`` -> ``y`` (``(P, 3)`` each) by regularised least squares.

    Minimises ``sum_p w_p |A_p v - y_p|^2 / sum_p w_p + smoothness * |D2 v|^2 / m^3 + ridge |v - v_id|^2``
    per output channel (see the module doc): ``A_p`` the interpolation weights of ``x_p``,
    ``w_p`` the sample ``weights`` (e.g. pixel counts of :func:`colour_histogram`), ``D2`` the second
    differences along the lattice axes and ``v_id`` the identity LUT (the tiny ridge only pins
    lattice regions that neither the data nor the prior determine). The normal equations are
    sparse (each node couples with its lattice neighbours) and symmetric positive definite. They are
    solved coarse to fine: exactly on a 9^3 lattice, then by Jacobi-preconditioned conjugate
    gradients (relative residual ``rtol``) on 17^3 and ``m^3``, each started from the previous
    solution resampled, so empty colour regions start from the coarse fill rather than from
    zero (plain CG would need hundreds of iterations to diffuse into them). Values are clipped to
    [0, 1].
    """
    import scipy.sparse as sp
    from scipy.sparse.linalg import cg, splu

    _check_interp(interpolation)
    m = int(size)
    if m < 2:
        raise ConfigError(f"size={m}: a 3D LUT needs at least 2 points per axis")
    xt = torch.as_tensor(np.asarray(x, dtype=np.float64))
    yt = np.asarray(y, dtype=np.float64)
    if len(xt) == 0:
        raise ConfigError("fit_lut: no training colours")
    wts = np.ones(len(xt)) if weights is None else np.asarray(weights, dtype=np.float64)
    wts = wts / wts.sum()
    levels = [v for v in (9, 17) if v < m] + [m]
    sol, prev = None, None
    for level in levels:
        system, rhs = _normal_equations(xt, yt, wts, level, interpolation, smoothness, ridge)
        if sol is None:
            sol = splu(system.tocsc()).solve(rhs)
        else:
            start = _resample(sol, prev, level)
            precond = sp.diags(1.0 / system.diagonal())
            cols = []
            for c in range(3):
                v, info = cg(system, rhs[:, c], x0=start[:, c], M=precond, rtol=rtol, maxiter=maxiter)
                if info > 0:
                    log.warning("fit_lut: conjugate gradients stopped after %d iterations (level %d)", info, level)
                cols.append(v)
            sol = np.stack(cols, 1)
        prev = level
    return torch.from_numpy(np.clip(sol.T, 0.0, 1.0)).float().reshape(3, m, m, m).contiguous()


# -- .cube files ---------------------------------------------------------------------------------
def write_cube(path: str | os.PathLike, lut: torch.Tensor, *, title: str = "cellbench") -> Path:
    """Write ``lut`` ``(3, m, m, m)`` as a ``.cube`` text file (``LUT_3D_SIZE m``, red fastest).

    Values are written with 7 decimals (error < 1e-7); the domain is [0, 1] per channel. The
    file is written atomically.
    """
    t = lut.detach().float().cpu()
    if t.ndim != 4 or t.shape[0] != 3 or len(set(t.shape[1:])) != 1:
        raise ValueError(f"expected a (3, m, m, m) LUT, got {tuple(t.shape)}")
    m = int(t.shape[-1])
    rows = t.reshape(3, -1).T.numpy()  # flat index r + m g + m^2 b: red fastest
    safe_title = title.replace('"', "'").replace("\n", " ")
    head = [f'TITLE "{safe_title}"', f"LUT_3D_SIZE {m}", "DOMAIN_MIN 0.0 0.0 0.0", "DOMAIN_MAX 1.0 1.0 1.0"]
    body = "\n".join(" ".join(f"{v:.7f}" for v in row) for row in rows)
    p = Path(path)
    atomic_write(p, ("\n".join(head) + "\n" + body + "\n").encode("ascii"))
    return p


def read_cube(path: str | os.PathLike) -> tuple[torch.Tensor, str]:
    """Read a ``.cube`` 3D LUT: ``((3, m, m, m) float32 tensor, title)``.

    Accepts ``TITLE``, ``LUT_3D_SIZE``, ``DOMAIN_MIN``/``DOMAIN_MAX`` (inputs are rescaled from that
    domain only when it is [0, 1]; other domains are rejected), ``#`` comments and blank lines.
    Raises :class:`~cellbench.errors.ConfigError` naming the file and line for anything else.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8", errors="strict")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: cannot read the .cube file ({exc})") from None
    size, title, values = None, "", []
    dmin, dmax = [0.0] * 3, [1.0] * 3
    for no, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        key = line.split()[0].upper()
        try:
            if key == "TITLE":
                title = line[len("TITLE"):].strip().strip('"')
            elif key == "LUT_3D_SIZE":
                size = int(line.split()[1])
            elif key == "LUT_1D_SIZE":
                raise ConfigError(f"{p}:{no}: a 1D LUT; cellbench reads 3D LUTs (LUT_3D_SIZE) only")
            elif key in ("DOMAIN_MIN", "DOMAIN_MAX"):
                vals = [float(v) for v in line.split()[1:4]]
                if len(vals) != 3:
                    raise ValueError("three numbers expected")
                (dmin if key == "DOMAIN_MIN" else dmax)[:] = vals
            elif key[0].isalpha():
                log.info("%s:%d: ignoring %s", p, no, key)
            else:
                row = [float(v) for v in line.split()]
                if len(row) != 3 or not all(math.isfinite(v) for v in row):
                    raise ValueError("three finite numbers expected")
                values.append(row)
        except (ValueError, IndexError) as exc:
            raise ConfigError(f"{p}:{no}: malformed line {raw.strip()!r} ({exc})") from None
    if size is None or size < 2:
        raise ConfigError(f"{p}: no LUT_3D_SIZE >= 2 line; not a 3D .cube file")
    if dmin != [0.0] * 3 or dmax != [1.0] * 3:
        raise ConfigError(f"{p}: DOMAIN_MIN/MAX {dmin}/{dmax}: only the [0, 1] domain is supported")
    if len(values) != size**3:
        raise ConfigError(f"{p}: LUT_3D_SIZE {size} needs {size**3} rows, found {len(values)}")
    arr = torch.tensor(values, dtype=torch.float32).T.reshape(3, size, size, size).contiguous()
    return arr, title
