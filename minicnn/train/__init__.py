"""Training: ``Trainer`` (fit/evaluate/predict), losses, metrics, optimizers, callbacks, history, checkpoints."""

from minicnn.train import losses, metrics, optimizers, tracking
from minicnn.train.callbacks import (Callback, CallbackList, CSVLogger, EarlyStopping, LearningRateScheduler,
                                     ModelCheckpoint, ProgbarLogger, ReduceLROnPlateau, TensorBoard,
                                     TerminateOnNaN)
from minicnn.train.history import History, smooth_curve
from minicnn.train.tracking import TensorBoardTracker, Tracker
from minicnn.train.trainer import Trainer

__all__ = ["Trainer", "History", "smooth_curve", "losses", "metrics", "optimizers", "Callback",
           "CallbackList", "CSVLogger", "EarlyStopping", "LearningRateScheduler", "ModelCheckpoint", "ProgbarLogger",
           "ReduceLROnPlateau", "TensorBoard", "TerminateOnNaN", "tracking", "Tracker", "TensorBoardTracker"]
