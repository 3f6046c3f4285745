"""How a training tells the world about each finished epoch: one channel, a list of reporters.

``train`` builds an :class:`EpochProgress` after every epoch and hands it to each
reporter of its list; nothing else reports epochs. The list is the caller's reporters
(default: the log line, :class:`EpochLog`; the flows pass theirs instead, a line in the
task run's log and a Prefect progress artifact, ``flows.train_evaluate.TrainingProgress``)
and the terminal progress bar (:class:`ProgressBar`) that ``cfg.progress`` asks for. A reporter runs in
the training loop: it must be cheap and must never fail the training.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

log = logging.getLogger("mrkd_core.train")  # the training's own log, as before the reporters existed

__all__ = ["EpochLog", "EpochProgress", "EpochReporter", "ProgressBar", "epoch_reporters", "hms"]


@dataclass(frozen=True)
class EpochProgress:
    """What ``train`` reports after each finished epoch.

    ``epoch`` is 1-based and counts finished epochs out of ``epochs`` (a resumed run
    starts past 0); ``loss`` is the epoch's mean loss of Eq. 4; ``seconds`` the epoch's
    wall time; ``images_per_second`` the training images of the epoch per second (tiles, for
    a tiled config: ``unit`` says which, ``img`` or ``tile``);
    ``elapsed_seconds`` the run's time so far; ``eta_seconds`` the remaining epochs times
    this run's mean epoch time.
    """

    category: str
    epoch: int
    epochs: int
    loss: float
    seconds: float
    images_per_second: float
    elapsed_seconds: float
    eta_seconds: float
    unit: str = "img"

    @property
    def rate(self) -> str:
        """``41.2 img/s`` (``tile/s`` for a tiled training)."""
        return f"{self.images_per_second:.1f} {self.unit}/s"

    @property
    def fraction(self) -> float:
        """Finished share of the training, in [0, 1]."""
        return self.epoch / self.epochs if self.epochs else 1.0


class EpochReporter(Protocol):
    """Receives every finished epoch of one training (``report``), then ``close`` once when it ends."""

    def report(self, progress: EpochProgress) -> None: ...

    def close(self) -> None: ...


def hms(seconds: float) -> str:
    """'1:02:03' for an ETA."""
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class EpochLog:
    """One INFO line per epoch: ``<category> epoch 3/200 loss 0.12345 41.2 img/s, ETA 1:23:45`` (``tile/s``
    for a tiled training)."""

    def report(self, p: EpochProgress) -> None:
        log.info("%s epoch %d/%d loss %.5f %s, ETA %s", p.category, p.epoch, p.epochs, p.loss, p.rate,
                 hms(p.eta_seconds))

    def close(self) -> None:
        pass


class ProgressBar:
    """A tqdm bar over the epochs (loss and images/s, or tiles/s, as its postfix) on ``file``
    (default: standard error); nothing when ``enabled`` is False or ``file`` is not a terminal
    (a log redirected to a file keeps the epoch lines, without the bar's carriage returns; a
    notebook still gets its widget).

    Created at the first report, so that a resumed training's bar starts at its epoch.
    """

    def __init__(self, enabled: bool = True, file: Any = None):
        self.enabled = enabled
        self.file = file
        self._bar: Any = None

    def report(self, p: EpochProgress) -> None:
        if not self.enabled:
            return
        if self._bar is None:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=p.epochs, initial=p.epoch - 1, desc=f"train {p.category}", unit="epoch",
                             leave=False, file=self.file, disable=None)  # None: off where not a terminal
            if not self._bar.disable:  # a disabled bar has no clock (its update and postfix do nothing)
                # Made when the first epoch has ended: its clock starts when that epoch started, or the
                # first rate is one epoch in no time (thousands of epochs/s) and the elapsed time lacks it.
                self._bar.start_t -= p.seconds
                self._bar.last_print_t -= p.seconds
        self._bar.update(1)
        self._bar.set_postfix(loss=f"{p.loss:.4f}", **{f"{p.unit}_s": f"{p.images_per_second:.1f}"})

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def epoch_reporters(given: Sequence[EpochReporter] | None, progress_bar: bool) -> list[EpochReporter]:
    """The reporters of one training: ``given`` (None: the log line), then the progress bar
    when ``progress_bar`` (``cfg.progress``)."""
    return [*(given if given is not None else (EpochLog(),)), ProgressBar(progress_bar)]
