"""Atomic checkpoints: weights as safetensors, everything else loadable with ``weights_only=True``.

Layout (``RUN_DIR/checkpoints/``)::

    iter_0001000/weights.safetensors   every network's state dict, keys "<net>.<param>"
    iter_0001000/state.pt              iteration, optimizer, scheduler, grad-scaler and RNG state
    iter_0001000/rng_rank<R>.pt        each rank's batch-source generator state
    iter_0001000/meta.json             method, architecture/preset signature, iteration
    latest.json                        {"iteration": 1000, "path": "iter_0001000"}

A checkpoint folder is written under a temporary name and renamed when complete; ``latest.json``
is replaced atomically afterwards, so an interrupted write never leaves a half checkpoint behind
the pointer.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import CheckpointError

LATEST = "latest.json"


def checkpoint_name(iteration: int) -> str:
    return f"iter_{iteration:07d}"


def write_json_atomic(path: Path, obj: Any) -> None:
    from ..fs import atomic_write  # unique temporary name, the umask's mode

    atomic_write(path, json.dumps(obj, indent=1, default=str))


def module_weights(nets: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
    """All state (parameters and buffers) of ``nets``, keyed ``"<net>.<name>"``, contiguous on CPU."""
    out = {}
    for net_name, net in nets.items():
        for k, v in net.state_dict().items():
            out[f"{net_name}.{k}"] = v.detach().cpu().contiguous()
    return out


def load_module_weights(nets: dict[str, nn.Module], weights: dict[str, torch.Tensor], source: Path) -> None:
    """Load ``"<net>.<name>"`` tensors into ``nets``; a mismatch is a :class:`CheckpointError`."""
    for net_name, net in nets.items():
        prefix = net_name + "."
        state = {k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)}
        expected = net.state_dict()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        wrong = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
        if missing or unexpected or wrong:
            detail = (
                f"missing {missing[:3]}"
                if missing
                else f"unexpected {unexpected[:3]}"
                if unexpected
                else f"shape of {wrong[0]} is {tuple(state[wrong[0]].shape)}, expected "
                f"{tuple(expected[wrong[0]].shape)}"
            )
            raise CheckpointError(
                f"{source}: network {net_name!r} does not match this architecture ({detail}); "
                "it was written with another preset or width — use the same preset, "
                "or a new output folder"
            )
        net.load_state_dict(state)


def save_checkpoint(
    ckpt_dir: Path,
    iteration: int,
    *,
    weights: dict[str, torch.Tensor] | None,
    state: dict[str, Any] | None,
    rank_state: dict[str, Any],
    rank: int,
    meta: dict[str, Any] | None,
) -> Path:
    """Write this rank's part of a checkpoint into the temporary folder (rank 0: also the shared part)."""
    tmp = ckpt_dir / f".tmp-{checkpoint_name(iteration)}"
    tmp.mkdir(parents=True, exist_ok=True)
    torch.save(rank_state, tmp / f"rng_rank{rank}.pt")
    if weights is not None:
        from ..fs import atomic_path  # safetensors alone writes mode 0600 whatever the umask

        with atomic_path(tmp / "weights.safetensors") as part:
            save_file(weights, str(part))
    if state is not None:
        torch.save(state, tmp / "state.pt")
    if meta is not None:
        write_json_atomic(tmp / "meta.json", meta)
    return tmp


def finalize_checkpoint(ckpt_dir: Path, iteration: int, *, keep: int = 2) -> Path:
    """Rename the temporary folder into place, point ``latest.json`` at it, prune old checkpoints."""
    name = checkpoint_name(iteration)
    final = ckpt_dir / name
    if final.exists():
        shutil.rmtree(final)
    os.replace(ckpt_dir / f".tmp-{name}", final)
    write_json_atomic(ckpt_dir / LATEST, {"iteration": iteration, "path": name})
    olds = sorted(p for p in ckpt_dir.glob("iter_*") if p.is_dir() and p.name != name)
    for p in olds[: max(0, len(olds) - (keep - 1))]:
        shutil.rmtree(p, ignore_errors=True)
    return final


def latest_checkpoint(ckpt_dir: Path) -> Path | None:
    pointer = ckpt_dir / LATEST
    if not pointer.exists():
        return None
    try:
        path = ckpt_dir / json.loads(pointer.read_text(encoding="utf-8"))["path"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{pointer}: corrupt ({exc}); delete it to start afresh") from None
    if not path.is_dir():
        raise CheckpointError(
            f"{pointer}: points at {path}, which is missing; delete {pointer} to start afresh"
        )
    return path


def read_checkpoint(path: Path, rank: int) -> tuple[dict, dict[str, torch.Tensor], dict, dict]:
    """``(meta, weights, state, rank_state)`` of a checkpoint folder; unreadable -> CheckpointError."""
    try:
        meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
        weights = load_file(str(path / "weights.safetensors"))
        state = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
        rank_file = path / f"rng_rank{rank}.pt"
        if not rank_file.exists():
            rank_file = path / "rng_rank0.pt"
        rank_state = torch.load(rank_file, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - unpickling/safetensors errors have their own types
        raise CheckpointError(f"{path}: cannot read checkpoint ({exc}); delete it to start afresh") from None
    return meta, weights, state, rank_state
