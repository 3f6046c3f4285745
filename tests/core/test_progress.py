"""The epoch reporters of mrkd_core.progress: what a terminal shows while a training runs."""

from __future__ import annotations

import io

from mrkd_core.progress import EpochProgress, ProgressBar


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_progress_bar_counts_the_first_epoch_s_time():
    """The bar is made when the first epoch has ended; its rate and elapsed time include that epoch
    (it once showed ~8000 epochs/s after a 2-s epoch). No clock is asserted: the epoch's time is given."""
    bar = ProgressBar(file=Terminal())
    bar.report(EpochProgress("plate", epoch=4, epochs=10, loss=0.5, seconds=30.0, images_per_second=2.0,
                             elapsed_seconds=30.0, eta_seconds=180.0))  # a training resumed after epoch 3
    shown = bar._bar.format_dict
    assert (shown["n"], shown["total"], shown["initial"]) == (4, 10, 3)
    assert shown["elapsed"] >= 30.0
    # One epoch in its 30 s, plus however long this process waited between the two lines: never more
    # than 1 per 30 s, never less than 1 per the bar's elapsed time (before: thousands per second).
    assert 1 / shown["elapsed"] <= shown["rate"] <= 1 / 30.0
    bar.close()
    assert bar._bar is None


def test_no_bar_where_the_output_is_not_a_terminal():
    """Standard error redirected to a file: the epoch log lines stay, the bar's carriage returns do not
    (a new user found them interleaved with the log lines of `mrkd train ... 2> train.log`)."""
    redirected = io.StringIO()
    bar = ProgressBar(file=redirected)
    for epoch in (1, 2):
        bar.report(EpochProgress("plate", epoch, 2, 0.5, 1.0, 2.0, float(epoch), 1.0))
    bar.close()
    assert redirected.getvalue() == ""
    shown = Terminal()
    bar = ProgressBar(file=shown)
    bar.report(EpochProgress("plate", 1, 2, 0.5, 1.0, 2.0, 1.0, 1.0))
    bar.close()
    assert "train plate" in shown.getvalue()


def test_a_disabled_bar_draws_nothing():
    bar = ProgressBar(enabled=False)
    bar.report(EpochProgress("plate", 1, 2, 0.5, 1.0, 2.0, 1.0, 1.0))
    assert bar._bar is None
    bar.close()


def test_a_tiled_training_reports_tiles_per_second(caplog):
    """A tiled batch holds tiles: the log line, the flows' line and the bar say tile/s, not img/s."""
    import logging
    from dataclasses import replace

    from mrkd_core.progress import EpochLog
    from mrkd_core.train import EpochRecord, _progress
    from tests.tiny import TINY_CFG

    record = EpochRecord(epoch=1, loss=0.5, seconds=2.0, images=160)
    whole, tiled = (_progress("plate", record, cfg, 2.0, 1) for cfg in (TINY_CFG, replace(TINY_CFG, tile_size=256)))
    assert (whole.rate, tiled.rate) == ("80.0 img/s", "80.0 tile/s")
    with caplog.at_level(logging.INFO, logger="mrkd_core.train"):
        EpochLog().report(tiled)
    assert "plate epoch 1/200 loss 0.50000 80.0 tile/s, ETA 0:06:38" in caplog.text
