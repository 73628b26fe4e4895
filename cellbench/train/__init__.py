"""Trainers of the two frameworks and the shared loop (checkpoint, resume, AMP, data parallel)."""

from .ccgan import CCGANTrainer, CCGANWeights
from .data import BatchSource, StreamingSource, make_source
from .loop import TrainConfig, Trainer
from .pcnet import PCNetTrainer, PCNetWeights

__all__ = [
    "BatchSource",
    "CCGANTrainer",
    "CCGANWeights",
    "PCNetTrainer",
    "PCNetWeights",
    "StreamingSource",
    "TrainConfig",
    "Trainer",
    "make_source",
]
