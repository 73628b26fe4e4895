"""Trainers of the two frameworks and the shared loop (checkpoint, resume, AMP, data parallel)."""

from .ccgan import CCGANTrainer, CCGANWeights
from .cycle import CycleTrainer
from .data import BatchSource, StreamingSource, make_source
from .distributed import DistInfo, setup_distributed, shutdown
from .loop import TrainConfig, Trainer
from .pcnet import PCNetTrainer, PCNetWeights

__all__ = [
    "BatchSource",
    "CCGANTrainer",
    "CCGANWeights",
    "CycleTrainer",
    "DistInfo",
    "PCNetTrainer",
    "PCNetWeights",
    "StreamingSource",
    "TrainConfig",
    "Trainer",
    "make_source",
    "setup_distributed",
    "shutdown",
]
