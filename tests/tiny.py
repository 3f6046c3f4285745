"""The tiny CPU model the inference tests share: ResNet18, random teacher, 64 px (seconds per test)."""

from mrkd_core.config import MRKDConfig

TINY_CFG = MRKDConfig(backbone="resnet18", teacher_weights="none", image_size=64, num_workers=0, device="cpu",
                      progress=False)
