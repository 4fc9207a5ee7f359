"""Knowledge distillation: losses and the teacher/student training loop."""

from .losses import AttentionMapLoss, DistillationLoss, HiddenStateLoss
from .trainer import Distiller, unwrap

__all__ = ["AttentionMapLoss", "DistillationLoss", "Distiller", "HiddenStateLoss", "unwrap"]
