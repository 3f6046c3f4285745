"""Training and evaluation revisions: which version of the code produced a stored state.

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

The evaluation revision does the same for what the same weights score: it is bumped
whenever a change alters the anomaly maps, scores or metrics a trained model gives (the
test-time masks, the map's smoothing, a metric's definition). It is recorded in run
manifests and calibrations; a stored result of another evaluation revision is not
reused as if computed now.

History of the evaluation revision (docs/fidelity.md, docs/inference.md):

1. everything before revision 2: the test-time FLM masks were drawn per call from one
   generator stream seeded with ``flm_test_seed``, so an image's score depended on the
   batch size, its companions and their order.
2. the test-time FLM masks are a function of the model alone (``flm_test_seed``, the
   scale and the feature map's size), the same for every image.
"""

from __future__ import annotations

TRAINING_REVISION = 3
EVALUATION_REVISION = 2

# What an older state without the field was written by.
UNRECORDED_REVISION = 1


def stored_revision(record: dict, field: str = "training_revision") -> int:
    """``record[field]`` of a checkpoint, model file, manifest or calibration (1 when absent).

    ``field`` is ``"training_revision"`` or ``"evaluation_revision"``.
    """
    value = record.get(field, UNRECORDED_REVISION)
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else UNRECORDED_REVISION
