"""The shared training loop: optimizers, AMP, channels-last, data parallel, logs, samples, checkpoints.

Subclasses (:class:`~cellbench.train.CCGANTrainer`, :class:`~cellbench.train.PCNetTrainer`) define
their networks and :meth:`Trainer.train_step`, which reads like the paper's algorithm and calls
:meth:`Trainer.optimize` to step one network while the others are frozen.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import CheckpointError, ConfigError
from ..nets import UNetGenerator
from ..nets.batchnorm import bn_gap, precise_bn, preserved_state, set_bn_momentum
from ..threads import cpu_bf16_native, limit_threads, threads_for_crop
from . import checkpoint as ckpt
from . import distributed as ddp
from .data import BatchSource

log = logging.getLogger(__name__)
LOG_FILE = "train_log.jsonl"
AMP_CHOICES = ("auto", "bf16", "fp16", "off")


@dataclass
class TrainConfig:
    """Optimisation settings shared by both frameworks (paper sec. 5.5).

    ``lr_decay_start``: iteration from which the learning rate falls linearly to 0 at
    ``iterations`` (``None``: constant, as in the paper). ``amp``: mixed precision on CUDA
    (``auto`` = bf16 where supported, else fp16 with loss scaling). On the CPU only ``bf16`` turns
    it on, and only where the CPU has bf16 units (AVX-512 BF16 / AMX,
    :func:`cellbench.threads.cpu_bf16_native`); ``auto`` stays fp32 there: the quick ccGAN trained
    with bf16 autocast ran 1.6x faster per generator step but ended at WBC CIEDE2000 5.10 instead of
    3.91 (its outputs are quantised to bf16's 8-bit mantissa while the paired loss is fitting
    differences of about 1/255; docs/speed.md).
    ``channels_last``: ``None`` = on for CUDA. ``bn_freeze_start``: iteration from which the
    generators' batch norm layers normalise with their running statistics during training too
    (``None``: never, as in the paper), so the last iterations train the function that inference
    runs (cf. Wu & Johnson 2021, "Rethinking 'Batch' in BatchNorm", sec. 4). ``ema_decay``:
    keep an exponential moving average of the generators' parameters (Polyak averaging, as in
    Karras et al. 2018, "Progressive growing of GANs", and Yazici et al. 2019, "The unusual
    effectiveness of averaging in GAN training") with this decay (warmed up as
    ``min(decay, (1 + t) / (10 + t))``); batch-norm statistics are copied from the trained network.
    The averaged generators are checkpointed and are the ones training returns. ``None``: off
    (the paper). ``bn_momentum``: PyTorch momentum of every batch-norm layer of the trained
    networks (the new batch's weight in the running averages; 0.1 is PyTorch's default, 0.01 is
    Keras' ``momentum=0.99`` that the paper's code ran with). ``precise_bn_batches``: > 0: the
    generators' running statistics are replaced by population statistics of the current weights over
    this many training batches, composed as in training (precise BN, Wu & Johnson 2021, sec. 3.2;
    :func:`cellbench.nets.batchnorm.precise_bn`): after the last iteration, or, with
    ``bn_freeze_start``, once at the freeze point, before the first frozen iteration, so the frozen
    statistics are the population's and the remaining iterations train the weights on exactly the
    statistics inference uses (re-estimating them after training would change the function those
    iterations optimised); 0: off.
    ``threads``: torch intra-op CPU threads while training on the CPU (``None``: the thread policy,
    :func:`cellbench.threads.threads_for_crop` of the training crop: 1 for the quick networks'
    32x32 crops, every usable core from 128x128; see ``docs/speed.md``); restored afterwards.
    """

    iterations: int = 50_000
    batch_size: int = 4
    lr: float = 2e-4
    betas: tuple[float, float] = (0.9, 0.999)
    lr_decay_start: int | None = None
    bn_freeze_start: int | None = None
    ema_decay: float | None = None
    bn_momentum: float = 0.1
    precise_bn_batches: int = 0
    checkpoint_every: int = 1000
    sample_every: int = 1000
    keep_checkpoints: int = 2
    amp: str = "auto"
    channels_last: bool | None = None
    progress: bool = True
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.iterations < 1 or self.batch_size < 1:
            raise ConfigError(
                f"iterations ({self.iterations}) and batch_size ({self.batch_size}) must be >= 1"
            )
        if self.amp not in AMP_CHOICES:
            raise ConfigError(f"amp={self.amp!r}: choose one of {', '.join(AMP_CHOICES)}")
        if self.threads is not None and (isinstance(self.threads, bool) or int(self.threads) < 1):
            raise ConfigError(f"threads={self.threads!r} must be an integer >= 1 (or unset: the thread policy)")
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise ConfigError(f"ema_decay={self.ema_decay!r} must lie in (0, 1) (or be off)")
        self.betas = (float(self.betas[0]), float(self.betas[1]))


@dataclass
class LossLog:
    """Running per-iteration loss values for the log line and the progress bar."""

    values: dict[str, float] = field(default_factory=dict)

    def add(self, **losses: torch.Tensor | float) -> None:
        for k, v in losses.items():
            self.values[k] = float(v.detach()) if isinstance(v, torch.Tensor) else float(v)


class Trainer:
    """Base class: owns networks, one Adam optimizer + LR scheduler per trained network, the loop.

    Parameters
    ----------
    nets:
        All networks by name (trained ones and frozen helpers such as a feature network).
    trained:
        Names of the networks that get an optimizer.
    config:
        :class:`TrainConfig`.
    signature:
        Architecture/preset description stored in checkpoints; resuming with a different one is a
        :class:`~cellbench.errors.CheckpointError`.
    device:
        Where to train; ``"auto"``: CUDA when available (``dist.device`` in a process group).
    dist:
        This process's place in the process group, from
        :func:`~cellbench.train.distributed.setup_distributed` (``None``: a single process).
        Building a trainer never joins a group.
    """

    method: ClassVar[str] = "trainer"

    def __init__(
        self,
        nets: dict[str, nn.Module],
        trained: list[str],
        config: TrainConfig,
        *,
        signature: dict[str, Any],
        device: str | torch.device = "auto",
        run_dir: str | Path | None = None,
        dist: ddp.DistInfo | None = None,
        colour_difference: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self.config = config
        self.signature = {"method": self.method, **signature}
        self.dist = ddp.DistInfo() if dist is None else dist
        if self.dist.device is not None and str(device) in ("auto", "cuda"):
            dev = self.dist.device
        elif str(device) == "auto":
            dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        else:
            dev = torch.device(device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError("device cuda requested but CUDA is not available; use --device cpu")
        if not self.dist.enabled and ddp.world_size_from_env() > 1:
            raise ConfigError(
                "started by torchrun, but no process group was set up: call "
                "cellbench.train.setup_distributed() and pass its result (cellbench fit does)"
            )
        self.device = dev
        self.channels_last = (
            (dev.type == "cuda") if config.channels_last is None else bool(config.channels_last)
        )
        self.amp_dtype = self._amp_dtype(config.amp, dev)
        self.nets = nets
        self.trained = list(trained)
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        for name, net in nets.items():
            net.to(device=dev, memory_format=fmt)
            if name in self.trained:
                ddp.broadcast_module(net, self.dist)
        self.optimizers = {
            n: torch.optim.Adam(nets[n].parameters(), lr=config.lr, betas=config.betas) for n in self.trained
        }
        self.schedulers = {
            n: torch.optim.lr_scheduler.LambdaLR(o, self._lr_factor) for n, o in self.optimizers.items()
        }
        #: averaged copies of the trained generators (``config.ema_decay``), keyed like ``nets``
        self.ema: dict[str, nn.Module] = {}
        if config.ema_decay is not None:
            for n in self.trained:
                if isinstance(nets[n], UNetGenerator):
                    self.ema[n] = copy.deepcopy(nets[n]).eval().requires_grad_(False)
        fp16 = self.amp_dtype == torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=fp16)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.iteration = 0
        self.losses = LossLog()
        for n in self.trained:
            set_bn_momentum(nets[n], config.bn_momentum)
        #: ``(a, b) -> per-pixel colour difference`` of RGB images, for the logged batch-norm gap
        self.colour_difference = colour_difference

    # -- helpers used by train_step ------------------------------------------------------------
    @staticmethod
    def _amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
        if amp == "off":
            return None
        if device.type == "cpu":  # bf16 autocast where the CPU has bf16 units (AVX-512 BF16 / AMX)
            return torch.bfloat16 if amp == "bf16" and cpu_bf16_native() else None
        if device.type != "cuda":
            return None
        if amp == "bf16" or (amp == "auto" and torch.cuda.is_bf16_supported()):
            return torch.bfloat16
        return torch.float16

    def _lr_factor(self, step: int) -> float:
        start, total = self.config.lr_decay_start, self.config.iterations
        if start is None or step < start:
            return 1.0
        return max(0.0, 1.0 - (step - start) / max(1, total - start))

    def autocast(self):
        """Mixed-precision context for forward passes (no-op on CPU or with ``amp="off"``)."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    @property
    def bn_frozen(self) -> bool:
        """Whether the current iteration trains the generators on their running batch-norm statistics
        (``config.bn_freeze_start`` reached)."""
        start = self.config.bn_freeze_start
        return start is not None and self.iteration >= start

    def set_trainable(self, *names: str) -> None:
        """Unfreeze ``names`` (training mode), freeze every other trained network (paper sec. 5.5).

        Frozen networks also run in inference mode, so their batch norm uses (and does not
        update) its running statistics, as Keras does for layers with ``trainable = False``.
        """
        freeze = self.bn_frozen
        for n in self.trained:
            self.nets[n].requires_grad_(n in names)
            self.nets[n].train(n in names)
            if freeze and n in names and isinstance(self.nets[n], UNetGenerator):
                for m in self.nets[n].modules():
                    if isinstance(m, nn.modules.batchnorm._BatchNorm):
                        m.eval()

    def optimize(self, loss: torch.Tensor, *names: str) -> None:
        """Backward ``loss`` into the unfrozen networks ``names`` and take one Adam step each."""
        for n in names:
            self.optimizers[n].zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        for n in names:
            ddp.average_gradients(list(self.nets[n].parameters()), self.dist)
            self.scaler.step(self.optimizers[n])  # a plain optimizer.step() unless fp16 loss scaling is on
        self.scaler.update()

    @torch.no_grad()
    def update_ema(self) -> None:
        """Move the averaged generators towards the trained ones (after an iteration's steps)."""
        if not self.ema:
            return
        t = self.iteration
        decay = min(float(self.config.ema_decay), (1.0 + t) / (10.0 + t))
        for n, avg in self.ema.items():
            live = self.nets[n]
            for pa, p in zip(avg.parameters(), live.parameters(), strict=True):
                pa.lerp_(p.detach(), 1.0 - decay)
            for ba, b in zip(avg.buffers(), live.buffers(), strict=True):
                ba.copy_(b)

    def result(self, name: str) -> nn.Module:
        """The network training returns under ``name``: its average when ``ema_decay`` is set."""
        return self.ema.get(name, self.nets[name])

    def _checkpointed(self) -> dict[str, nn.Module]:
        """Networks whose weights a checkpoint holds: the trained ones and their averages."""
        return {**{n: self.nets[n] for n in self.trained}, **{f"ema_{n}": m for n, m in self.ema.items()}}

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        return images.to(self.device, non_blocking=True).contiguous(memory_format=fmt)

    # -- to implement --------------------------------------------------------------------------
    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """One iteration on a batch; records losses with ``self.losses.add(...)``."""
        raise NotImplementedError

    def sample_rows(self, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
        """Rows of the sample grid (each ``(n, 3, h, w)``)."""
        return [x, y]

    def bn_inputs(
        self, name: str, x: torch.Tensor, y: torch.Tensor, *, averaged: bool = False
    ) -> torch.Tensor | None:
        """Network ``name``'s input as a training step composes it from the batch ``(x, y)``, for
        the batch-norm gap and precise BN (``None``: the network has no such input); ``averaged``:
        computed with the averaged networks (``ema_decay``) that training returns."""
        return None

    #: the network whose train/eval gap is logged, and the networks precise BN re-estimates
    GAP_NETWORK: ClassVar[str | None] = None
    PRECISE_BN_NETWORKS: ClassVar[tuple[str, ...]] = ()

    @torch.no_grad()
    def measure_bn_gap(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """``bn_gap_l1`` (and ``bn_gap_de00`` with a ``colour_difference``): mean difference between
        :attr:`GAP_NETWORK`'s training-mode (batch statistics) and inference-mode (running
        statistics) outputs for the ``x`` rows of its training input built from ``(x, y)``
        (:func:`cellbench.nets.batchnorm.bn_gap`). No gradients, no random numbers; buffers
        and modes are restored, so logging it does not change the run."""
        name = self.GAP_NETWORK
        if name is None:
            return {}
        x, y = self.prepare(x), self.prepare(y)
        with contextlib.ExitStack() as stack:  # modes of every network as they were
            for net in self.nets.values():
                stack.enter_context(preserved_state(net))
            batch = self.bn_inputs(name, x, y)
        if batch is None:
            return {}
        gap = bn_gap(self.nets[name], batch, rows=x.shape[0], colour_difference=self.colour_difference)
        return {f"bn_gap_{k}": round(v, 6) for k, v in gap.items()}

    @torch.no_grad()
    def recompute_bn(self, source: BatchSource, *, averaged: bool = True) -> int:
        """Precise BN (``config.precise_bn_batches``) for :attr:`PRECISE_BN_NETWORKS` (their
        averages when ``ema_decay`` is set and ``averaged``; the trained networks at the freeze
        point, whose statistics the averages copy): population statistics of the current weights over
        training batches drawn from ``source``'s current pool, composed by :meth:`bn_inputs`.
        ``source``'s random state is restored afterwards, so the result depends only on the
        checkpointed state (a resumed run recomputes the same statistics). Returns the batches used."""
        n = int(self.config.precise_bn_batches)
        if n <= 0 or not self.PRECISE_BN_NETWORKS:
            return 0
        state = source.state_dict()

        def inputs(name: str) -> Iterator[torch.Tensor]:
            source.load_state_dict(state)  # every network sees the same batches
            for _ in range(n):
                x, y = BatchSource.next_batch(source)  # the current pool; a stream is not advanced
                with self.autocast():
                    batch = self.bn_inputs(name, self.prepare(x), self.prepare(y), averaged=averaged)
                yield batch

        used = 0
        try:
            for name in self.PRECISE_BN_NETWORKS:
                net = self.result(name) if averaged else self.nets[name]
                with self.autocast():
                    used = precise_bn(net, inputs(name))
                ddp.average_buffers(net, self.dist)
        finally:
            source.load_state_dict(state)
        log.info("precise BN at iteration %d: %s re-estimated over %d batches", self.iteration,
                 ", ".join(self.PRECISE_BN_NETWORKS), used)
        return used

    # -- the loop ------------------------------------------------------------------------------
    @property
    def ckpt_dir(self) -> Path | None:
        return None if self.run_dir is None else self.run_dir / "checkpoints"

    def cpu_threads(self, crop: int) -> int | None:
        """Intra-op threads of a CPU training on ``crop`` x ``crop`` batches: ``config.threads``, else
        the thread policy (:func:`cellbench.threads.threads_for_crop`); None on CUDA (left as it is)."""
        if self.device.type != "cpu":
            return None
        return int(self.config.threads) if self.config.threads is not None else threads_for_crop(crop)

    def fit(self, source: BatchSource, *, resume: bool = False, stop_at: int | None = None) -> None:
        """Train until ``config.iterations`` (or ``stop_at``, to simulate an interruption in tests).

        On the CPU the loop runs with :meth:`cpu_threads` intra-op threads (restored afterwards).
        """
        with limit_threads(self.cpu_threads(int(getattr(source, "crop", 0) or 0))):
            self._fit(source, resume=resume, stop_at=stop_at)

    def _fit(self, source: BatchSource, *, resume: bool, stop_at: int | None) -> None:
        cfg = self.config
        if resume:
            self.load_latest(source)
        elif self.ckpt_dir is not None and (self.ckpt_dir / ckpt.LATEST).exists():
            log.warning(
                "%s holds checkpoints of an earlier run; starting afresh (use --resume to continue)",
                self.run_dir,
            )
        log_file = self._open_log()
        samples = source.fixed_batch(4)
        end = min(cfg.iterations, stop_at) if stop_at is not None else cfg.iterations
        bar = tqdm(
            total=cfg.iterations,
            initial=self.iteration,
            desc=f"{self.method} training",
            unit="it",
            disable=not (cfg.progress and self.dist.is_main),
            dynamic_ncols=True,
        )
        try:
            while self.iteration < end:
                if self.iteration == cfg.bn_freeze_start:  # before the first step on frozen statistics
                    self.recompute_bn(source, averaged=False)
                frozen = self.bn_frozen
                t0 = time.perf_counter()
                x, y = source.next_batch()
                for net in self.nets.values():
                    net.train()
                self.losses = LossLog()
                self.train_step(self.prepare(x), self.prepare(y))
                with warnings.catch_warnings():  # fp16 loss scaling skips steps with inf gradients
                    warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)`")
                    for s in self.schedulers.values():
                        s.step()
                for n in self.trained:
                    ddp.average_buffers(self.nets[n], self.dist)
                self.update_ema()
                self.iteration += 1
                it = self.iteration
                if log_file is not None:
                    rec = {
                        "iteration": it,
                        "seconds": round(time.perf_counter() - t0, 4),
                        "lr": self.schedulers[self.trained[0]].get_last_lr()[0],
                        **self.losses.values,
                    }
                    if frozen:  # this step trained on the running statistics: from here the logged gap is
                        rec["bn_frozen"] = 1  # the batch statistics' distance, not that of training's function
                    if (cfg.sample_every and it % cfg.sample_every == 0) or it == cfg.iterations:
                        rec.update(self.measure_bn_gap(*samples))
                    log_file.write(json.dumps(rec) + "\n")
                    log_file.flush()
                bar.update(1)
                bar.set_postfix(
                    {k: f"{v:.3g}" for k, v in list(self.losses.values.items())[:4]}, refresh=False
                )
                if self.run_dir is not None and cfg.sample_every and it % cfg.sample_every == 0:
                    self.write_samples(*samples)
                if self.run_dir is not None and (it % cfg.checkpoint_every == 0 or it == cfg.iterations):
                    self.save_checkpoint(source)
        finally:
            bar.close()
            if log_file is not None:
                log_file.close()
        if self.iteration >= cfg.iterations and cfg.bn_freeze_start is None:
            self.recompute_bn(source)
        for net in (*self.nets.values(), *self.ema.values()):
            net.eval()

    def _open_log(self):
        if self.run_dir is None or not self.dist.is_main:
            return None
        self.run_dir.mkdir(parents=True, exist_ok=True)
        path = self.run_dir / LOG_FILE
        kept = []
        if self.iteration > 0 and path.exists():  # resumed: drop lines past the checkpoint
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    if json.loads(line)["iteration"] <= self.iteration:
                        kept.append(line)
                except (ValueError, KeyError, TypeError):
                    continue
        path.write_text("".join(s + "\n" for s in kept), encoding="utf-8")
        return path.open("a", encoding="utf-8")

    @torch.no_grad()
    def write_samples(self, x: torch.Tensor, y: torch.Tensor) -> Path | None:
        """PNG grid ``RUN_DIR/samples/iter_XXXXXXX.png``; rows from :meth:`sample_rows`, eval mode."""
        if not self.dist.is_main:
            return None
        from ..io import write_image
        from ..tensors import to_uint8

        for net in self.nets.values():
            net.eval()
        rows = [r.float().cpu() for r in self.sample_rows(self.prepare(x), self.prepare(y))]
        for net in self.nets.values():
            net.train()
        grid = torch.cat([torch.cat(list(r), dim=2) for r in rows], dim=1)  # (3, rows*h, n*w)
        path = self.run_dir / "samples" / f"{ckpt.checkpoint_name(self.iteration)}.png"
        write_image(path, to_uint8(grid[None])[0])
        return path

    # -- checkpoints ---------------------------------------------------------------------------
    def save_checkpoint(self, source: BatchSource) -> None:
        d = self.ckpt_dir
        main = self.dist.is_main
        rank_state = {"source": source.state_dict()}
        if main:
            d.mkdir(parents=True, exist_ok=True)
        ddp.barrier(self.dist)
        state = meta = weights = None
        if main:
            weights = ckpt.module_weights(self._checkpointed())
            state = {
                "iteration": self.iteration,
                "optimizers": {n: o.state_dict() for n, o in self.optimizers.items()},
                "schedulers": {n: s.state_dict() for n, s in self.schedulers.items()},
                "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
            }
            meta = {
                "method": self.method,
                "iteration": self.iteration,
                "signature": self.signature,
                "world_size": self.dist.world_size,
                "config": asdict(self.config),
            }
        ckpt.save_checkpoint(
            d,
            self.iteration,
            weights=weights,
            state=state,
            rank_state=rank_state,
            rank=self.dist.rank,
            meta=meta,
        )
        ddp.barrier(self.dist)
        if main:
            ckpt.finalize_checkpoint(d, self.iteration, keep=self.config.keep_checkpoints)
        ddp.barrier(self.dist)

    def load_latest(self, source: BatchSource) -> bool:
        """Restore the newest checkpoint of ``run_dir`` (False when there is none)."""
        if self.ckpt_dir is None:
            raise ConfigError("resume needs an output folder (cellbench fit --out DIR --resume)")
        path = ckpt.latest_checkpoint(self.ckpt_dir)
        if path is None:
            log.warning("nothing to resume in %s; starting afresh", self.ckpt_dir)
            return False
        meta, weights, state, rank_state = ckpt.read_checkpoint(path, self.dist.rank)
        if meta.get("signature") != self.signature:
            old, new = meta.get("signature") or {}, self.signature
            diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            shown = ", ".join(f"{k}: checkpoint {old.get(k)!r} vs now {new.get(k)!r}" for k in diff[:4])
            raise CheckpointError(
                f"{path}: checkpoint of another architecture or preset ({shown}); resume "
                "with the same method, preset and options, or use a new output folder"
            )
        ckpt.load_module_weights(self._checkpointed(), weights, path)
        try:
            for n, o in self.optimizers.items():
                o.load_state_dict(state["optimizers"][n])
            for n, s in self.schedulers.items():
                s.load_state_dict(state["schedulers"][n])
            if state.get("scaler") and self.scaler.is_enabled():
                self.scaler.load_state_dict(state["scaler"])
            source.load_state_dict(rank_state["source"])
            self.iteration = int(state["iteration"])
        except (KeyError, ValueError, RuntimeError) as exc:
            raise CheckpointError(
                f"{path}: incomplete or mismatched training state ({exc}); use a new output folder"
            ) from None
        log.info("resumed from %s (iteration %d)", path, self.iteration)
        return True
