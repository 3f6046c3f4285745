"""The training revision: which version of the training code produced a stored state.

A config hash says *what* was asked for; the training revision says which code turned
that config into weights. It is bumped whenever a change alters what the same config
trains (an initialisation, a default the config does not name, a fix in the loss), so
that checkpoints, models and results written before the change are never resumed or
reused as if the new code had produced them. It is recorded in every checkpoint, model
file and run manifest; state without one was written by revision 1.

History (docs/fidelity.md has the details):

1. everything before revision 2.
2. the FLM generation modules are initialised like the official code (Kaiming-normal,
   fan_out, ReLU), no longer with PyTorch's default (2.45× smaller weights).
3. ILM places patches as NSA does: source windows centred in [lo, side − lo) and clipped
   at the image border, destinations centred in [h // 2 + 1, side − h // 2 − 1); before,
   every window was whole and could touch the border (patches 11 % larger on average,
   docs/ilm.md "Fidelity to NSA").
"""

from __future__ import annotations

TRAINING_REVISION = 3

# What an older state without the field was written by.
UNRECORDED_REVISION = 1


def stored_revision(record: dict) -> int:
    """The ``training_revision`` of a checkpoint, model file or manifest (1 when absent)."""
    value = record.get("training_revision", UNRECORDED_REVISION)
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else UNRECORDED_REVISION
