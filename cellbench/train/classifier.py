"""Training and evaluation of the WBC classifier (:class:`cellbench.nets.classifier.WBCClassifier`).

Training uses **no colour augmentation by default**: the classifier must react to colour shifts,
because measuring them is the point. Geometric augmentation (flips and 90 degree rotations, the
paper's sec. 5.1 augmentation) is on by default; a cell has no preferred orientation.

Training with ``work_dir`` keeps::

    WORK_DIR/checkpoints/      the last finished epoch, in the shared checkpoint layout of
                               :mod:`cellbench.train.checkpoint` (weights.safetensors holds the
                               model "classifier.*" and the best weights "best.*"; state.pt the
                               optimizer, schedule and early-stopping state; meta.json the key)
    WORK_DIR/train_log.jsonl   one line per epoch: epoch, train_loss, train_acc, val_acc, val_loss, ...
    WORK_DIR/best/             the returned classifier (SELECTION: best validation accuracy, then loss)

so an interrupted run resumes from its last finished epoch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from ..data.sets import LabelledSet
from ..errors import CheckpointError, ConfigError, DatasetError, MissingWeightsError
from ..nets.classifier import WBCClassifier, json_default
from ..options import check_float, check_int, parse_bool
from ..presets import load_preset
from ..tensors import as_float01, check_batch
from .checkpoint import (
    finalize_checkpoint,
    latest_checkpoint,
    load_module_weights,
    module_weights,
    read_checkpoint,
    save_checkpoint,
)

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
LOG_FILE = "train_log.jsonl"
#: The epoch kept (part of the checkpoint key, so a work folder of another rule does not resume): the best
#: validation accuracy, and among equally accurate epochs the lowest validation loss.
SELECTION = "val_acc, then val_loss"

#: Every training option with its default; presets (models/classifier.toml) and overrides set them.
DEFAULTS: dict[str, Any] = {
    "arch": "resnet18d",          # any timm model name
    "model_kwargs": {},           # extra timm.create_model arguments (e.g. channels = [32, 64, 128, 256])
    "input_size": 128,            # images are resized (antialiased bilinear) to input_size x input_size
    "epochs": 30,                 # maximum number of epochs
    "batch_size": 32,
    "lr": 2e-3,                   # AdamW peak learning rate (linear warm-up, then cosine decay)
    "weight_decay": 0.05,
    "warmup_epochs": 1.0,
    "label_smoothing": 0.1,
    "patience": 6,                # stop after this many epochs without a better val accuracy
    "min_epochs": 1,              # never stop before this many epochs
    "geometric_aug": True,        # random flips and 90 degree rotations
    "colour_jitter": 0.0,         # off by default (see module docstring); per-channel gain range +-j
    "drop_rate": 0.0,
    "eval_batch_size": 128,
    "pretrained": False,          # True needs pretrained_path (nothing is downloaded)
    "pretrained_path": None,      # a local state dict (.safetensors, .pt, .pth) for the backbone
    "device": None,               # None: CUDA when available, else CPU
    "threads": None,              # torch CPU threads during training (restored afterwards)
    "channels_last": True,
}


def classifier_config(preset: str | None = "quick", **overrides: Any) -> dict[str, Any]:
    """The full training configuration: :data:`DEFAULTS` < preset ``preset`` < ``overrides``."""
    cfg = dict(DEFAULTS)
    cfg.update(load_preset("classifier", preset))
    cfg.update(overrides)
    unknown = sorted(set(cfg) - set(DEFAULTS))
    if unknown:
        import difflib

        hints = [k + "".join(f" (did you mean {m!r}?)" for m in difflib.get_close_matches(k, DEFAULTS, n=1))
                 for k in unknown]
        raise ConfigError(f"unknown classifier option(s) {', '.join(hints)}; known: {', '.join(DEFAULTS)}")
    cfg["model_kwargs"] = dict(cfg["model_kwargs"] or {})
    for key in ("epochs", "batch_size", "input_size", "patience", "eval_batch_size", "min_epochs"):
        cfg[key] = check_int(cfg[key], f"classifier option {key}", min=0 if key == "min_epochs" else 1)
    for key in ("lr", "weight_decay", "warmup_epochs", "label_smoothing", "colour_jitter", "drop_rate"):
        positive = key == "lr"
        upper = 1.0 if key in ("label_smoothing", "drop_rate", "colour_jitter") else None
        # checked, not converted: the values are part of the benchmark's classifier stage key
        check_float(cfg[key], f"classifier option {key}", min=0.0, max=upper, min_exclusive=positive)
    for key in ("geometric_aug", "pretrained", "channels_last"):
        parse_bool(cfg[key], f"classifier option {key}")
    if parse_bool(cfg["pretrained"], "pretrained") and not cfg["pretrained_path"]:
        raise MissingWeightsError(
            "pretrained=True needs pretrained_path: a local state dict file; nothing is downloaded")
    return cfg


def train_classifier(train: LabelledSet, val: LabelledSet, *, preset: str | None = "quick", seed: int = 0,
                     work_dir: str | os.PathLike | None = None, progress: bool = True,
                     on_epoch: Callable[[dict[str, Any]], None] | None = None,
                     **overrides: Any) -> WBCClassifier:
    """Train a WBC classifier from scratch on Y images, with early stopping on validation accuracy.

    Parameters
    ----------
    train, val:
        Labelled Y images ``(N, 3, H, W)`` float in [0, 1] (any size; resized to ``input_size``).
        The classes are ``sorted(set(train.labels))``; every val label must be among them.
    preset:
        A table of ``models/classifier.toml`` (``quick``, ``paper``, ``tiny``) or None for the defaults.
    seed:
        Seeds the weights' initialisation, the batch order and the augmentation.
    work_dir:
        Keeps ``checkpoint.pt`` (every epoch), ``train_log.jsonl`` and ``best/``; a run
        with the same configuration resumes from the last finished epoch (a finished one just
        loads its result).
    progress:
        Show tqdm progress bars.
    on_epoch:
        Called with each epoch's log record after its checkpoint is written.
    **overrides:
        Any key of :data:`DEFAULTS` (``epochs=5``, ``lr=1e-3``, ...).

    Returns
    -------
    WBCClassifier
        The weights of the epoch with the best validation accuracy (among equally accurate epochs, the lowest
        validation loss: :data:`SELECTION`), in eval mode and frozen;
        ``clf.info`` holds ``best_epoch``, ``best_val_acc``, ``epochs_run`` and ``history``.
    """
    from tqdm.auto import tqdm

    cfg = classifier_config(preset, **overrides)
    _check_set(train, "train")
    _check_set(val, "val")
    classes = sorted(set(train.labels))
    unknown = sorted(set(val.labels) - set(classes))
    if unknown:
        raise DatasetError(f"validation labels {unknown} do not occur in the training set {classes}")
    device = torch.device(cfg["device"] or ("cuda" if torch.cuda.is_available() else "cpu"))
    work = Path(work_dir) if work_dir is not None else None
    key = _config_key(cfg, classes, seed, train, val)

    old_threads = torch.get_num_threads()
    if cfg["threads"]:
        torch.set_num_threads(int(cfg["threads"]))
    try:
        # Initialise the weights from `seed` without touching the caller's global RNG.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            clf = WBCClassifier(cfg["arch"], classes, cfg["input_size"], model_kwargs=cfg["model_kwargs"],
                                preset=preset, drop_rate=float(cfg["drop_rate"]),
                                channels_last=parse_bool(cfg["channels_last"], "channels_last"))
        if cfg["pretrained_path"]:
            _load_pretrained(clf, Path(cfg["pretrained_path"]))
        clf.to(device)

        x_train = _resized_uint8(train.images, cfg["input_size"])
        y_train = torch.tensor([classes.index(c) for c in train.labels], dtype=torch.long)
        x_val = _resized_uint8(val.images, cfg["input_size"])
        y_val = torch.tensor([classes.index(c) for c in val.labels], dtype=torch.long)

        geometric = parse_bool(cfg["geometric_aug"], "geometric_aug")
        bs = min(cfg["batch_size"], len(x_train))
        steps_per_epoch = max(1, len(x_train) // bs)  # drop_last: BatchNorm needs > 1 sample
        total_steps = cfg["epochs"] * steps_per_epoch
        warmup = int(round(cfg["warmup_epochs"] * steps_per_epoch))
        opt = torch.optim.AdamW(clf.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, warmup, total_steps))

        state = {"epoch": 0, "best_acc": -1.0, "best_loss": math.inf, "best_epoch": 0, "bad_epochs": 0,
                 "done": False, "best_state": None, "history": []}
        if work is not None:
            work.mkdir(parents=True, exist_ok=True)
            state = _resume(work, key, clf, opt, sched, state)
            if state["done"]:
                log.info("%s: training already finished; loading its result", work)

        epoch_bar = tqdm(total=cfg["epochs"], initial=state["epoch"], desc="classifier",
                         unit="epoch", disable=not progress)
        while not state["done"]:
            epoch = state["epoch"] + 1
            t0, c0 = time.perf_counter(), time.process_time()
            gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
            order = torch.randperm(len(x_train), generator=gen)[: steps_per_epoch * bs]
            clf.train()
            loss_sum, correct, seen = 0.0, 0, 0
            for i in tqdm(range(steps_per_epoch), desc=f"epoch {epoch}", leave=False, disable=not progress):
                idx = order[i * bs:(i + 1) * bs]
                xb = x_train[idx].float().div_(255.0)
                xb = _augment(xb, gen, geometric=geometric, colour_jitter=float(cfg["colour_jitter"]))
                yb = y_train[idx].to(device)
                out = clf.logits(xb)
                loss = F.cross_entropy(out, yb, label_smoothing=float(cfg["label_smoothing"]))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                loss_sum += float(loss.detach()) * len(idx)
                correct += int((out.argmax(1) == yb).sum())
                seen += len(idx)
            val_loss, val_acc = _evaluate_tensors(clf, x_val, y_val, cfg["eval_batch_size"])
            # SELECTION: accuracy on a small validation split saturates early (every epoch at 1.0); without the
            # loss the first such epoch would be kept, and the score would depend on when the tie began.
            improved = (val_acc, -val_loss) > (state["best_acc"], -state["best_loss"])
            if improved:
                state.update(best_acc=val_acc, best_loss=val_loss, best_epoch=epoch, bad_epochs=0,
                             best_state={k: v.detach().cpu().clone() for k, v in clf.state_dict().items()})
            else:
                state["bad_epochs"] += 1
            record = {"epoch": epoch, "train_loss": loss_sum / max(seen, 1),
                      "train_acc": correct / max(seen, 1),
                      "val_loss": val_loss, "val_acc": val_acc, "best_val_acc": state["best_acc"],
                      "improved": bool(improved), "lr": opt.param_groups[0]["lr"],
                      "wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0}
            state["epoch"] = epoch
            state["history"].append(record)
            stop_early = state["bad_epochs"] >= cfg["patience"] and epoch >= cfg["min_epochs"]
            state["done"] = epoch >= cfg["epochs"] or stop_early
            log.info("classifier epoch %d: train loss %.4f, val acc %.4f%s", epoch, record["train_loss"],
                     val_acc, " (early stop)" if stop_early else "")
            epoch_bar.set_postfix(loss=f"{record['train_loss']:.3f}", val_acc=f"{val_acc:.3f}")
            epoch_bar.update(1)
            if work is not None:
                # Log first, then the checkpoint: a resume drops log lines beyond the checkpoint.
                with open(work / LOG_FILE, "a", encoding="utf-8") as fh:
                    fh.write(json.dumps(record) + "\n")
                _save_checkpoint(work, key, clf, opt, sched, state)
            if on_epoch is not None:
                on_epoch(record)
        epoch_bar.close()
    finally:
        torch.set_num_threads(old_threads)

    if state["best_state"] is not None:
        clf.load_state_dict(state["best_state"])
    clf.info = {"best_epoch": state["best_epoch"], "best_val_acc": state["best_acc"],
                "epochs_run": state["epoch"], "seed": seed, "config": _jsonable(cfg),
                "history": state["history"]}
    clf.eval().requires_grad_(False)
    if work is not None:
        clf.save(work / "best")
    return clf


def evaluate_classifier(clf: WBCClassifier, data: LabelledSet, *, batch_size: int = 64) -> dict[str, Any]:
    """Accuracy of ``clf`` on labelled images.

    Returns
    -------
    dict
        ``accuracy`` (overall, in [0, 1]), ``per_class`` (class -> accuracy, None for a class with
        no images), ``per_class_n``, ``confusion`` (list of lists; rows the true class, columns
        the predicted class, both in ``clf.classes`` order), ``classes``, ``n``, and
        ``predictions`` (predicted class names in the order of ``data``).
    """
    _check_set(data, "evaluation")
    unknown = sorted(set(data.labels) - set(clf.classes))
    if unknown:
        raise DatasetError(f"labels {unknown} are not classes of this classifier ({clf.classes})")
    truth = np.array([clf.classes.index(c) for c in data.labels])
    pred = clf.predict(data.images).numpy()
    k = len(clf.classes)
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (truth, pred), 1)
    per_class_n = confusion.sum(1)
    per_class = {c: (float(confusion[i, i] / per_class_n[i]) if per_class_n[i] else None)
                 for i, c in enumerate(clf.classes)}
    return {"accuracy": float((truth == pred).mean()), "per_class": per_class,
            "per_class_n": {c: int(n) for c, n in zip(clf.classes, per_class_n, strict=True)},
            "confusion": confusion.tolist(), "classes": list(clf.classes), "n": int(len(truth)),
            "predictions": [clf.classes[i] for i in pred.tolist()]}


# -- helpers -----------------------------------------------------------------------------------
def _check_set(data: LabelledSet, what: str) -> None:
    if len(data) == 0:
        raise DatasetError(f"the {what} set is empty")
    if hasattr(data.images, "batches"):  # a streamed set (cellbench.data.stream.LazyImages): float on indexing
        if len(data.images.shape) != 4 or data.images.shape[1] != 3:
            raise ValueError(f"{what} images must have shape (N, 3, H, W), got {tuple(data.images.shape)}")
        return
    check_batch(data.images, f"{what} images", allow_uint8=True)  # stored 8-bit images too


def _lr_factor(step: int, warmup: int, total: int) -> float:
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * progress))


def _resized_uint8(images: torch.Tensor, size: int, chunk: int = 256) -> torch.Tensor:
    """Resize once to the network input and keep uint8 (4x less memory than float).

    A streamed set (:class:`cellbench.data.stream.LazyImages`) is read in order through its decoding
    pipeline, 64 images at a time: what is held is the network-input stack (e.g. 12 kB an image
    at 64 px), not the decoded images. uint8 images are converted a chunk at a time to float32
    ``k / 255``, the values of their float copy."""
    out = torch.empty((len(images), 3, size, size), dtype=torch.uint8)
    if hasattr(images, "batches"):  # resizing is per image: the chunking changes no value
        parts, chunk = images.batches(64), 64
    else:
        parts = (as_float01(images[i:i + chunk]).float() for i in range(0, len(images), chunk))
    for i, x in zip(range(0, len(images), chunk), parts, strict=True):
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        out[i:i + chunk] = x.clamp(0, 1).mul(255.0).round().to(torch.uint8)
    return out


def _augment(x: torch.Tensor, gen: torch.Generator, *, geometric: bool, colour_jitter: float) -> torch.Tensor:
    """A random element of the dihedral group D4 per image (flips, 90 degree rotations); gain jitter."""
    n = len(x)
    if geometric:
        flip = torch.rand(n, generator=gen) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
        k = torch.randint(0, 4, (n,), generator=gen)
        for kk in (1, 2, 3):
            m = k == kk
            if bool(m.any()):
                x[m] = torch.rot90(x[m], kk, dims=(2, 3))
    if colour_jitter > 0:
        gain = 1.0 + (torch.rand(n, 3, 1, 1, generator=gen) * 2 - 1) * colour_jitter
        x = (x * gain).clamp_(0, 1)
    return x


def _evaluate_tensors(clf: WBCClassifier, x_u8: torch.Tensor, y: torch.Tensor, batch_size: int,
                      ) -> tuple[float, float]:
    loss_sum, correct = 0.0, 0
    with clf.eval_mode():
        for i in range(0, len(x_u8), batch_size):
            out = clf.logits(x_u8[i:i + batch_size].float().div_(255.0)).float().cpu()
            yb = y[i:i + batch_size]
            loss_sum += float(F.cross_entropy(out, yb, reduction="sum"))
            correct += int((out.argmax(1) == yb).sum())
    return loss_sum / len(y), correct / len(y)


def _load_pretrained(clf: WBCClassifier, path: Path) -> None:
    """Load a local backbone state dict; the classification head (other shape) is skipped."""
    if not path.is_file():
        raise MissingWeightsError(f"{path}: pretrained weights not found; nothing is downloaded, "
                                  "point pretrained_path at a local state dict or drop --pretrained")
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
            state = state.get("state_dict", state) if isinstance(state, dict) else state
    except Exception as exc:  # noqa: BLE001 - any decoding failure is the same user error
        raise CheckpointError(f"{path}: cannot read pretrained weights ({exc})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a state dict")
    own = clf.net.state_dict()
    usable = {k.removeprefix("net."): v for k, v in state.items()}
    usable = {k: v for k, v in usable.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
    if not usable:
        raise CheckpointError(f"{path}: no weight matches architecture {clf.arch!r}; wrong file?")
    clf.net.load_state_dict(usable, strict=False)
    log.info("loaded %d/%d tensors from %s", len(usable), len(own), path)


def _config_key(cfg: dict[str, Any], classes: list[str], seed: int, train: LabelledSet,
                val: LabelledSet) -> str:
    skip = {"device", "threads", "eval_batch_size"}
    return json.dumps({"cfg": {k: v for k, v in _jsonable(cfg).items() if k not in skip}, "select": SELECTION,
                       "classes": classes, "seed": seed, "n_train": len(train), "n_val": len(val),
                       "train_ids": _digest(train.ids), "val_ids": _digest(val.ids)}, sort_keys=True)


def _digest(ids: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]


def _save_checkpoint(work: Path, key: str, clf: WBCClassifier, opt, sched, state: dict) -> None:
    """The finished epoch ``state["epoch"]`` through the shared checkpoint helpers (one rank)."""
    weights = module_weights({"classifier": clf})
    if state["best_state"] is not None:
        weights.update({f"best.{k}": v.contiguous() for k, v in state["best_state"].items()})
    progress = {k: v for k, v in state.items() if k not in ("history", "best_state")}
    ckpt_dir = work / CHECKPOINT_DIR
    save_checkpoint(ckpt_dir, state["epoch"], weights=weights,
                    state={"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "progress": progress},
                    rank_state={}, rank=0, meta={"kind": "classifier", "key": key, "epoch": state["epoch"]})
    finalize_checkpoint(ckpt_dir, state["epoch"], keep=1)


def _resume(work: Path, key: str, clf: WBCClassifier, opt, sched, state: dict) -> dict:
    log_path = work / LOG_FILE
    path = latest_checkpoint(work / CHECKPOINT_DIR)
    if path is None:
        if log_path.exists():
            log_path.unlink()  # a log without a checkpoint belongs to nothing that can resume
        return state
    meta, weights, saved, _ = read_checkpoint(path, 0)
    if meta.get("key") != key:
        raise CheckpointError(f"{path}: checkpoint of a different classifier configuration or data; "
                              "use another work_dir or delete this one to start over")
    try:
        load_module_weights({"classifier": clf}, weights, path)
        opt.load_state_dict(saved["optimizer"])
        sched.load_state_dict(saved["scheduler"])
        progress = dict(saved["progress"])
    except (KeyError, RuntimeError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{path}: checkpoint does not match the model ({exc}); delete it") from None
    restored = dict(state)
    restored.update(progress)
    best = {k[len("best."):]: v for k, v in weights.items() if k.startswith("best.")}
    restored["best_state"] = best or None
    history = []
    if log_path.exists():
        for line in log_path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                rec = json.loads(line)
                if rec.get("epoch", 0) <= restored["epoch"]:
                    history.append(rec)
        log_path.write_text("".join(json.dumps(r) + "\n" for r in history), encoding="utf-8")
    restored["history"] = history
    log.info("resuming classifier training from epoch %d (%s)", restored["epoch"], path)
    return restored


def _jsonable(cfg: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(cfg, default=json_default))


__all__ = ["DEFAULTS", "classifier_config", "evaluate_classifier", "train_classifier"]
