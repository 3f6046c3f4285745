"""What the ``mrkd`` commands print as their result (stdout; logging goes to stderr)."""

from __future__ import annotations

import sys


def out(text: str) -> None:
    """One result line (or block) for the user's terminal or a pipe, flushed at once."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()
