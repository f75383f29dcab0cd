"""``History``: the per-epoch logs of a ``fit``, the lecture's two plots, JSON save/load."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from minicnn.train.callbacks import Callback

__all__ = ["History", "smooth_curve"]


def smooth_curve(points, factor: float = 0.8) -> list[float]:
    """Exponential moving average ``s_i = factor * s_{i-1} + (1 - factor) * p_i``, ``s_0 = p_0``."""
    smoothed: list[float] = []
    for p in points:
        smoothed.append(smoothed[-1] * factor + p * (1 - factor) if smoothed else float(p))
    return smoothed


class History(Callback):
    """Records ``history[key] = [value per epoch]`` (``loss``, the metrics as named, ``val_*``, and
    ``learning_rate`` when a learning-rate callback logs it) and
    ``epoch = [epoch index, ...]``, like Keras' ``History``."""

    def __init__(self, history: dict | None = None, epoch: list | None = None):
        super().__init__()
        self.history: dict[str, list[float]] = {k: list(v) for k, v in (history or {}).items()}
        self.epoch: list[int] = list(epoch or [])

    def on_epoch_end(self, epoch, logs=None):
        self.epoch.append(int(epoch))
        for k, v in (logs or {}).items():
            self.history.setdefault(k, []).append(float(v))

    def to_json(self) -> str:
        """NaN and infinities are written as JSON ``NaN``/``Infinity`` (Python's json reads them back)."""
        return json.dumps({"epoch": self.epoch, "history": self.history})

    @classmethod
    def from_json(cls, text: str) -> "History":
        d = json.loads(text)
        return cls(d["history"], d["epoch"])

    def save(self, path: str | os.PathLike) -> None:
        Path(path).write_text(self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "History":
        return cls.from_json(Path(path).read_text())

    def plot(self, path: str | os.PathLike | None = None, smooth: float | None = None, metric: str | None = None):
        """The lecture's two figures: training (dots ``'bo'``) and validation (line ``'b'``) ``metric``,
        then the same for loss. ``smooth`` (e.g. 0.8) applies :func:`smooth_curve` first. ``metric``
        None: the accuracy as it was logged, ``"acc"`` (``metrics=["acc"]``, the lecture's) or ``"accuracy"``.

        With ``path`` (e.g. ``"history.png"``) saves ``<stem>_<metric><ext>`` and ``<stem>_loss<ext>``
        and returns their paths; without, returns the two matplotlib figures. Figures are drawn
        with the Agg canvas, not pyplot, so no GUI backend or global figure state is involved.
        """
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        if metric is None:
            metric = "acc" if "acc" in self.history else "accuracy"  # a missing one: the KeyError below names the keys
        figures, paths = [], []
        for key, label in ((metric, metric.capitalize()), ("loss", "Loss")):
            if key not in self.history:
                raise KeyError(f"History.plot: no {key!r} in the history (keys: {sorted(self.history)})")
            fig = Figure()
            FigureCanvasAgg(fig)
            ax = fig.subplots()
            for name, style, kind in ((key, "bo", "Training"), (f"val_{key}", "b", "Validation")):
                if name in self.history:
                    ys = self.history[name]
                    ys = smooth_curve(ys, smooth) if smooth else ys
                    ax.plot(range(1, len(ys) + 1), ys, style, label=f"{kind} {key}")
            ax.set_title(f"Training and validation {label.lower()}")
            ax.set_xlabel("Epochs")
            ax.set_ylabel(label)
            ax.legend()
            if path is not None:
                p = Path(path)
                out = p.with_name(f"{p.stem}_{key}{p.suffix or '.png'}")
                fig.savefig(out)
                paths.append(out)
            else:
                figures.append(fig)
        return paths if path is not None else figures

    def __repr__(self):
        last = {k: v[-1] for k, v in self.history.items() if v and not math.isnan(v[-1])}
        return f"History(epochs={len(self.epoch)}, last={last})"
