"""BTAD, the beanTech Anomaly Detection dataset (Mishra et al., 2021).

Layout (MVTec-like, with ``ok``/``ko`` instead of ``good``/<defect>)::

    <root>/{01,02,03}/train/ok/*.{bmp,png}
    <root>/{01,02,03}/test/{ok,ko}/*.{bmp,png}
    <root>/{01,02,03}/ground_truth/ko/<same stem>.png   (product 03: .bmp)

The zip wraps the products in one folder; download() finds them inside it.
"""

from __future__ import annotations

from mrkd_core.data.catalog import catalogued
from mrkd_core.data.download import DownloadableMixin, DownloadInfo
from mrkd_core.data.mvtec import MVTecLayout

BTAD_PRODUCTS: tuple[str, ...] = ("01", "02", "03")

BTAD_DOWNLOAD = DownloadInfo(
    dataset="btad",
    filename="btad.zip",
    # Last known public URL (University of Udine); override with MRKD_BTAD_URL or --url.
    url="https://avires.dimi.uniud.it/papers/btad/btad.zip",
    sha256="461c9387e515bfed41ecaae07c50cf6b10def647b36c9e31d239ab2736b10d2a",
    env_var="MRKD_BTAD_URL",
)


@catalogued("btad")
class BTAD(DownloadableMixin, MVTecLayout):
    """Products 01, 02, 03; one defect type ``ko``; masks share the image's stem."""

    description = "BTAD: 3 industrial products, defect-free 'ok' and defective 'ko'"
    good_dir = "ok"
    known_categories = BTAD_PRODUCTS
    # Products 01/02 have .png masks, product 03 .bmp masks (whatever the image format).
    mask_names = ("{stem}.png", "{stem}.bmp")
    download_info = BTAD_DOWNLOAD
