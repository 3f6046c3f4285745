"""The MRKD networks (no training loop): teacher, OCBE bottleneck, student, FLM generation, loss."""

from mrkd_core.model.flm import Generation, GenerationModules, flm_mask
from mrkd_core.model.loss import mrkd_loss
from mrkd_core.model.mrkd import MRKD, build_mrkd
from mrkd_core.model.ocbe import OCBE
from mrkd_core.model.student import Student, build_student
from mrkd_core.model.teacher import Teacher, build_teacher

__all__ = [
    "MRKD", "OCBE", "Generation", "GenerationModules", "Student", "Teacher",
    "build_mrkd", "build_student", "build_teacher", "flm_mask", "mrkd_loss",
]
