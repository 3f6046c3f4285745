"""What the ``mrkd`` commands print as their result (stdout; logging goes to stderr), and where
a progress bar is seen."""

from __future__ import annotations

import sys


def out(text: str) -> None:
    """One result line (or block) for the user's terminal or a pipe, flushed at once."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def on_terminal(stream=None) -> bool:
    """Whether ``stream`` (default: standard error, where progress bars go) is a terminal.

    A progress bar is drawn only there: redirected to a file or a pipe (``2> train.log``, a
    Ray or Prefect worker's log), its carriage returns only fill the log between the lines
    that say the same thing.
    """
    isatty = getattr(stream if stream is not None else sys.stderr, "isatty", None)
    try:
        return bool(isatty is not None and isatty())
    except ValueError:  # a closed stream
        return False
