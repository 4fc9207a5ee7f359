"""Distillation objectives: Hinton KD on logits, hidden-state matching, attention-map matching.

Every loss takes the teacher's tensors as targets and detaches them, so gradients reach the
student (and a loss's own projections) only. Positions are masked with a boolean ``mask``
(True = counts; a 0 / 1 integer mask is read the same) shaped like the logits / hidden
states without their last dimension; for language models it usually comes from
``labels != ignore_index``. Masked-out positions are dropped before any arithmetic, so
whatever padding holds (NaN, Inf) reaches neither the loss nor the gradients.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def _kept_positions(mask: torch.Tensor | None, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Each tensor ``[*mask.shape, ...]`` reduced to the positions mask keeps, ``[kept, ...]``.
    Masked-out positions are dropped before any arithmetic, not multiplied by 0 after it:
    padding may hold NaN / Inf (a teacher whose logits there are all -inf, a fully masked
    attention row), and 0 * NaN would poison the loss and, through softmax's backward, the
    student's gradients. A 0 / 1 integer mask (Hugging Face's attention_mask) counts as boolean."""
    if mask is None:
        return tensors
    if mask.is_floating_point() or mask.is_complex():
        raise TypeError(f"mask must be boolean (True = counts), got {mask.dtype}")
    for tensor in tensors:
        if tensor.shape[:mask.dim()] != mask.shape:
            raise ValueError(f"mask must have shape {tuple(tensor.shape[:mask.dim()])}, got {tuple(mask.shape)}")
    keep = mask.to(device=tensors[0].device, dtype=torch.bool)
    return tuple(tensor[keep] for tensor in tensors)


def _mean_or_zero(per_position: torch.Tensor) -> torch.Tensor:
    """The mean, or 0 (with the graph kept) when no position is left."""
    return per_position.sum() / max(per_position.numel(), 1)


def kl_per_position(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(softmax(t / T) || softmax(s / T)) at every position, in fp32 from log-softmaxes
    (no exp of large logits, no log of 0). Classes the teacher rules out (logit -inf, as
    masked vocabularies have) add 0: F.kl_div's exp(t) * (t - s) makes them 0 * -inf = NaN.
    A NaN in the teacher's logits stays NaN (selecting p > 0 instead of p != 0 turned it into
    a finite loss that hid the broken teacher)."""
    log_p_student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits.detach().float() / temperature, dim=-1)
    p_teacher = log_p_teacher.exp()
    return torch.where(p_teacher == 0, 0.0, p_teacher * (log_p_teacher - log_p_student)).sum(-1)


class DistillationLoss(nn.Module):
    """Hinton et al.'s knowledge-distillation loss on logits ``[..., V]`` (e.g. ``[B, T, V]``):

        alpha * T^2 * KL(softmax(t / T) || softmax(s / T)) + (1 - alpha) * CE(s, y)

    averaged over the positions whose label is not ``ignore_index`` (padding). The T^2
    keeps the soft-target gradients on the same scale as the hard-label ones for any T.
    With ``alpha=1`` no labels are needed (pure distillation)."""

    def __init__(self, temperature: float = 2.0, alpha: float = 0.5, ignore_index: int = -100) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
        self.temperature, self.alpha, self.ignore_index = float(temperature), float(alpha), ignore_index

    def terms(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor | None,
              labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The loss and its two parts: {"loss", "kd", "ce"} (kd before alpha * T^2).
        ``teacher_logits`` may be None when alpha is 0 (training on the labels alone)."""
        self._check(student_logits, teacher_logits, labels)
        mask = None if labels is None else labels != self.ignore_index
        loss = kd = ce = torch.zeros((), device=student_logits.device)
        if teacher_logits is not None:
            student, teacher = _kept_positions(mask, student_logits, teacher_logits)
            kd = _mean_or_zero(kl_per_position(student, teacher, self.temperature))
            loss = self.alpha * self.temperature**2 * kd
        if labels is not None:
            student, targets = _kept_positions(mask, student_logits, labels)
            ce = _mean_or_zero(F.cross_entropy(student.float().reshape(-1, student.shape[-1]), targets.reshape(-1),
                                               reduction="none"))
            loss = loss + (1.0 - self.alpha) * ce
        return {"loss": loss, "kd": kd.detach(), "ce": ce.detach()}

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.terms(student_logits, teacher_logits, labels)["loss"]

    def _check(self, student_logits, teacher_logits, labels) -> None:
        if teacher_logits is None:
            if self.alpha > 0:
                raise ValueError(f"teacher_logits are required when alpha > 0 (alpha={self.alpha})")
        elif student_logits.shape != teacher_logits.shape:
            raise ValueError(f"student_logits {tuple(student_logits.shape)} and teacher_logits "
                             f"{tuple(teacher_logits.shape)} must have the same shape (same vocabulary)")
        if not student_logits.is_floating_point():
            raise TypeError(f"student_logits must be a float tensor, got {student_logits.dtype}")
        if labels is None:
            if self.alpha < 1.0:
                raise ValueError(f"labels are required when alpha < 1 (alpha={self.alpha})")
            return
        if labels.shape != student_logits.shape[:-1]:
            raise ValueError(f"labels must have shape {tuple(student_logits.shape[:-1])} (the logits without "
                             f"the vocabulary dimension), got {tuple(labels.shape)}")
        if labels.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"labels must be int64 class indices, got {labels.dtype}")

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, alpha={self.alpha}, ignore_index={self.ignore_index}"


def _layer_pairs(layer_map) -> list[tuple[int, int]]:
    pairs = list(layer_map.items()) if isinstance(layer_map, dict) else [tuple(p) for p in layer_map]
    if not pairs or any(len(p) != 2 for p in pairs):
        raise ValueError(f"layer_map must be a non-empty {{student_layer: teacher_layer}} mapping or list of "
                         f"pairs, got {layer_map!r}")
    return [(int(s), int(t)) for s, t in pairs]


def _pick(states: Sequence[torch.Tensor], index: int, what: str) -> torch.Tensor:
    if not -len(states) <= index < len(states):
        raise IndexError(f"layer_map names {what} layer {index}, but the {what} returned {len(states)} states")
    return states[index]


class HiddenStateLoss(nn.Module):
    """Mean squared error between mapped hidden states, ``layer_map`` {student_layer:
    teacher_layer} (indices into the ``hidden_states`` tuples, 0 = embeddings, as in
    Hugging Face models). When the widths differ, a learned linear projection per pair maps
    the student's state to the teacher's width (FitNets); its parameters belong to this
    module and must be trained with the student."""

    def __init__(self, layer_map, student_dim: int, teacher_dim: int) -> None:
        super().__init__()
        self.pairs = _layer_pairs(layer_map)
        self.student_dim, self.teacher_dim = student_dim, teacher_dim
        self.projections = nn.ModuleList(
            nn.Identity() if student_dim == teacher_dim else nn.Linear(student_dim, teacher_dim, bias=False)
            for _ in self.pairs)

    def forward(self, student_hidden: Sequence[torch.Tensor], teacher_hidden: Sequence[torch.Tensor],
                mask: torch.Tensor | None = None) -> torch.Tensor:
        losses = []
        for (s, t), project in zip(self.pairs, self.projections, strict=True):
            student, teacher = _pick(student_hidden, s, "student"), _pick(teacher_hidden, t, "teacher")
            if student.shape[-1] != self.student_dim or teacher.shape[-1] != self.teacher_dim:
                raise ValueError(f"pair ({s}, {t}): expected widths {self.student_dim} -> {self.teacher_dim}, got "
                                 f"student {tuple(student.shape)} and teacher {tuple(teacher.shape)}")
            student, teacher = _kept_positions(mask, student, teacher)
            per_position = (project(student).float() - teacher.detach().float()).pow(2).mean(-1)
            losses.append(_mean_or_zero(per_position))
        return torch.stack(losses).mean()


class AttentionMapLoss(nn.Module):
    """KL(teacher || student) between mapped attention maps ``[B, H, T, T]`` (each query row a
    probability distribution, as Hugging Face returns with ``output_attentions=True``).
    When the head counts differ, both sides are averaged over heads first. ``mask`` [B, T]
    selects the query positions that count."""

    def __init__(self, layer_map, eps: float = 1e-8) -> None:
        super().__init__()
        self.pairs, self.eps = _layer_pairs(layer_map), eps

    def forward(self, student_attentions: Sequence[torch.Tensor], teacher_attentions: Sequence[torch.Tensor],
                mask: torch.Tensor | None = None) -> torch.Tensor:
        losses = []
        for s, t in self.pairs:
            student = _pick(student_attentions, s, "student").float()
            teacher = _pick(teacher_attentions, t, "teacher").detach().float()
            if student.dim() != 4 or student.shape[2:] != teacher.shape[2:] or student.shape[0] != teacher.shape[0]:
                raise ValueError(f"pair ({s}, {t}): attention maps must be [B, H, T, T] with equal B and T, got "
                                 f"student {tuple(student.shape)} and teacher {tuple(teacher.shape)}")
            if student.shape[1] != teacher.shape[1]:
                student, teacher = student.mean(1, keepdim=True), teacher.mean(1, keepdim=True)
            # Query positions first ([B, T, H, T]) so that mask [B, T] selects query rows.
            student, teacher = _kept_positions(mask, student.transpose(1, 2), teacher.transpose(1, 2))
            per_row = (teacher * ((teacher + self.eps).log() - (student + self.eps).log())).sum(-1).mean(-1)
            losses.append(_mean_or_zero(per_row))
        return torch.stack(losses).mean()
