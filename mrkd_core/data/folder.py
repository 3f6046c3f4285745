"""Any folder in MVTec AD layout: the user's own data (and the synthetic demo set).

Categories are discovered: every sub-folder that contains ``train/``. Defect-free images
live in ``train/good`` and ``test/good``; a defective image ``test/<defect>/<id>.<ext>``
has its mask at ``ground_truth/<defect>/<id>_mask.png`` (MVTec AD's rule) or, as in
BTAD-like exports, ``<id>.png`` / ``<id>_mask.bmp`` / ``<id>.bmp``. A category without
``ground_truth/`` is image-labelled: its defective images are evaluated with the image
metrics, and the pixel metrics are reported as absent (docs/datasets.md). There is no
download.
"""

from __future__ import annotations

from mrkd_core.data.catalog import catalogued
from mrkd_core.data.mvtec import MVTecLayout


@catalogued("folder")
class FolderDataset(MVTecLayout):
    """MVTec AD layout with discovered category names and tolerant mask naming."""

    description = "any folder in MVTec AD layout (<category>/train/good, test/<defect>, ground_truth/<defect>)"
    known_categories = None
    mask_names = ("{stem}_mask.png", "{stem}.png", "{stem}_mask.bmp", "{stem}.bmp")
    masks_optional = True
