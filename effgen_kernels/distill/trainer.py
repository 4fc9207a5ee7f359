"""Distiller: trains a student on a frozen teacher's outputs.

A batch is ``(inputs, labels)``: ``inputs`` a tensor (called as ``model(inputs)``) or a dict
of keyword arguments (``model(**inputs)``); ``labels`` aligned position by position with the
logits (for a causal LM, shift them before), padding marked with the loss's ignore_index.
Models may return logits, a tuple whose first item is the logits, or an object with
``.logits`` (and ``.hidden_states`` / ``.attentions`` when those losses are used), as
Hugging Face models and ``effgen_kernels.gpt.GPT`` do.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from torch import nn

from ..progress import Progress
from .losses import AttentionMapLoss, DistillationLoss, HiddenStateLoss


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (or the module itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _call(model: nn.Module, inputs, **extra):
    return model(**inputs, **extra) if isinstance(inputs, dict) else model(inputs, **extra)


def _field(output, name: str, model_role: str):
    if name == "logits":
        if isinstance(output, torch.Tensor):
            return output
        if isinstance(output, (tuple, list)):
            return output[0]
    value = getattr(output, name, None)
    if value is None:
        raise TypeError(f"the {model_role}'s output has no .{name}; return it (Hugging Face models do when asked "
                        f"with output_{name}=True)")
    return value


class Distiller:
    """Knowledge distillation of ``student`` from ``teacher``.

    With ``teacher=None`` and a loss of alpha 0 it is a plain training loop on the labels
    (the no-distillation baseline, with the same features and no teacher cost).

    The teacher is put in eval mode, frozen (requires_grad False) and run under no_grad; it
    may itself be quantized (e.g. by ``quantize_``) to run faster. The student may be wrapped
    in DistributedDataParallel (with or without effgen's compressed hook): accumulation
    micro-steps then skip the gradient all-reduce (``no_sync``).

    ``hidden_loss`` / ``attention_loss`` add hidden-state / attention-map matching with
    the given weights; a HiddenStateLoss's projections must be in ``optimizer``.
    ``autocast_dtype`` (bf16 / fp16) runs both forwards under torch.autocast; fp16 also
    scales the loss (GradScaler). ``log_path`` appends one JSON line of metrics per step."""

    def __init__(self, teacher: nn.Module | None, student: nn.Module, loss: DistillationLoss,
                 optimizer: torch.optim.Optimizer, *,
                 hidden_loss: HiddenStateLoss | None = None, hidden_weight: float = 1.0,
                 attention_loss: AttentionMapLoss | None = None, attention_weight: float = 1.0,
                 grad_accum_steps: int = 1, autocast_dtype: torch.dtype | None = None,
                 max_grad_norm: float | None = None, scheduler=None, log_path: str | Path | None = None,
                 progress: bool = True) -> None:
        if grad_accum_steps < 1:
            raise ValueError(f"grad_accum_steps must be >= 1, got {grad_accum_steps}")
        if autocast_dtype not in (None, torch.bfloat16, torch.float16):
            raise ValueError(f"autocast_dtype must be None, torch.bfloat16 or torch.float16, got {autocast_dtype}")
        self.teacher, self.student, self.loss, self.optimizer = teacher, student, loss, optimizer
        self.hidden_loss, self.hidden_weight = hidden_loss, hidden_weight
        self.attention_loss, self.attention_weight = attention_loss, attention_weight
        self.grad_accum_steps, self.autocast_dtype = grad_accum_steps, autocast_dtype
        self.max_grad_norm, self.scheduler = max_grad_norm, scheduler
        self.log_path = Path(log_path) if log_path is not None else None
        self.progress = progress
        self.step = 0  # optimizer steps taken
        self.device_type = next(unwrap(student).parameters()).device.type
        self.scaler = torch.amp.GradScaler(self.device_type, enabled=autocast_dtype is torch.float16)
        self.needs_teacher = loss.alpha > 0 or hidden_loss is not None or attention_loss is not None
        if teacher is None and self.needs_teacher:
            raise ValueError("teacher is None, but the losses need its outputs (alpha > 0 or hidden / attention "
                             "matching); teacher=None is for training on the labels alone")
        if teacher is not None:
            teacher.eval().requires_grad_(False)
        self._check_optimizer_covers(hidden_loss, "hidden_loss")

    def _check_optimizer_covers(self, module: nn.Module | None, name: str) -> None:
        if module is None:
            return
        optimized = {id(p) for group in self.optimizer.param_groups for p in group["params"]}
        missing = [n for n, p in module.named_parameters() if p.requires_grad and id(p) not in optimized]
        if missing:
            raise ValueError(f"{name} has trainable parameters that the optimizer does not update: {missing}; "
                             f"pass them to the optimizer with the student's")

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.autocast_dtype)

    def _forward_extras(self) -> dict:
        extra = {}
        if self.hidden_loss is not None:
            extra["output_hidden_states"] = True
        if self.attention_loss is not None:
            extra["output_attentions"] = True
        return extra

    def compute_loss(self, batch) -> dict[str, torch.Tensor]:
        """Forward both models on one micro-batch; the loss terms (``"loss"`` has the graph)."""
        inputs, labels = batch
        extra = self._forward_extras()
        teacher_out = None
        with self._autocast():
            if self.needs_teacher:
                with torch.no_grad():
                    teacher_out = _call(self.teacher, inputs, **extra)
            student_out = _call(self.student, inputs, **extra)
        teacher_logits = None if teacher_out is None else _field(teacher_out, "logits", "teacher")
        terms = self.loss.terms(_field(student_out, "logits", "student"), teacher_logits, labels)
        mask = None if labels is None else labels != self.loss.ignore_index
        if self.hidden_loss is not None:
            hidden = self.hidden_loss(_field(student_out, "hidden_states", "student"),
                                      _field(teacher_out, "hidden_states", "teacher"), mask)
            terms["hidden"] = hidden.detach()
            terms["loss"] = terms["loss"] + self.hidden_weight * hidden
        if self.attention_loss is not None:
            attention = self.attention_loss(_field(student_out, "attentions", "student"),
                                            _field(teacher_out, "attentions", "teacher"), mask)
            terms["attention"] = attention.detach()
            terms["loss"] = terms["loss"] + self.attention_weight * attention
        return terms

    def train_step(self, micro_batches: Iterable) -> dict[str, float]:
        """One optimizer step over ``grad_accum_steps`` micro-batches; returns mean metrics."""
        self.student.train()
        self.optimizer.zero_grad(set_to_none=True)
        sums: dict[str, float] = {}
        micro_batches = list(micro_batches)
        if len(micro_batches) != self.grad_accum_steps:
            raise ValueError(f"expected {self.grad_accum_steps} micro-batches (grad_accum_steps), "
                             f"got {len(micro_batches)}")
        for i, batch in enumerate(micro_batches):
            last = i == len(micro_batches) - 1
            sync = contextlib.nullcontext() if last or not hasattr(self.student, "no_sync") else self.student.no_sync()
            with sync:
                terms = self.compute_loss(batch)
                self.scaler.scale(terms["loss"] / self.grad_accum_steps).backward()
            for name, value in terms.items():
                sums[name] = sums.get(name, 0.0) + float(value.detach())
        metrics = {name: value / len(micro_batches) for name, value in sums.items()}
        if not all(math.isfinite(v) for v in metrics.values()):
            raise FloatingPointError(f"non-finite loss at step {self.step}: {metrics}")
        if self.max_grad_norm is not None:
            self.scaler.unscale_(self.optimizer)
            params = [p for group in self.optimizer.param_groups for p in group["params"]]
            metrics["grad_norm"] = float(nn.utils.clip_grad_norm_(params, self.max_grad_norm))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.scheduler is not None:
            self.scheduler.step()
        self.step += 1
        return metrics

    def fit(self, batches: Callable[[int], object] | Iterable, steps: int, *,
            checkpoint_path: str | Path | None = None, checkpoint_every: int = 0,
            eval_fn: Callable[[nn.Module], dict] | None = None, eval_every: int = 0) -> list[dict]:
        """Train until ``self.step == steps`` (so a resumed Distiller continues where it
        stopped). ``batches`` is an iterable of micro-batches or a function
        ``batches(index)`` of the micro-batch index (which makes resuming exact).
        Returns the per-step metrics."""
        source = batches if callable(batches) else iter(batches)
        history = []
        progress = Progress(steps, "distill", enabled=self.progress)
        progress.update(self.step)
        while self.step < steps:
            index = self.step * self.grad_accum_steps
            micro = [source(index + i) if callable(source) else next(source) for i in range(self.grad_accum_steps)]
            lr = self.optimizer.param_groups[0]["lr"]  # this step's: train_step moves the scheduler on
            metrics = {"step": self.step + 1, **self.train_step(micro), "lr": lr}
            if eval_fn is not None and eval_every and self.step % eval_every == 0:
                metrics.update(eval_fn(unwrap(self.student)))
            history.append(metrics)
            self._log(metrics)
            progress.update(self.step, f"loss {metrics['loss']:.4f} kd {metrics['kd']:.4f} ce {metrics['ce']:.4f}")
            if checkpoint_path is not None and checkpoint_every and self.step % checkpoint_every == 0:
                self.save(checkpoint_path)
        return history

    def _log(self, metrics: dict) -> None:
        if self.log_path is None:
            return
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("a") as f:
            f.write(json.dumps({"time": time.time(), **metrics}) + "\n")

    def state_dict(self) -> dict:
        """Everything needed to resume: student, optimizer, loss projections, scheduler, scaler, step."""
        return {"step": self.step, "student": unwrap(self.student).state_dict(),
                "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
                "hidden_loss": self.hidden_loss.state_dict() if self.hidden_loss is not None else None,
                "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None}

    def load_state_dict(self, state: dict) -> None:
        unwrap(self.student).load_state_dict(state["student"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        if self.hidden_loss is not None:
            self.hidden_loss.load_state_dict(state["hidden_loss"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.step = state["step"]

    def save(self, path: str | Path) -> None:
        """Write a checkpoint atomically (a crash mid-write leaves the previous one intact)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(path.suffix + ".partial")
        torch.save(self.state_dict(), partial)
        partial.replace(path)

    def load(self, path: str | Path) -> None:
        self.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
