"""MRKD: Masked Reverse Knowledge Distillation for image anomaly detection.

The library knows nothing of Prefect or Ray: flows/ orchestrates it.
"""

from mrkd_core.config import MRKDConfig

__all__ = ["MRKDConfig"]
__version__ = "0.1.0"
