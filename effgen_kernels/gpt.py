"""A small GPT-style causal language model and byte-level text corpora that need no download.

The model is the project's own example transformer (distillation, tensor parallel, demos).
Its layer names follow the Llama convention used by Hugging Face (``self_attn.q_proj`` ...
``o_proj``, ``mlp.up_proj`` / ``down_proj``) so the same tensor-parallel plan and
quantization filters fit both it and SmolLM2. ``forward`` returns an object with
``.logits`` and, on request, ``.hidden_states`` / ``.attentions``, as Hugging Face does.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import sysconfig
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


@dataclasses.dataclass(frozen=True)
class GPTConfig:
    vocab_size: int = 256  # bytes
    context: int = 256
    dim: int = 256
    layers: int = 4
    heads: int = 4
    mlp_ratio: int = 4

    def __post_init__(self) -> None:
        if self.dim % self.heads:
            raise ValueError(f"dim ({self.dim}) must be a multiple of heads ({self.heads})")

    def scaled(self, **changes) -> GPTConfig:
        return dataclasses.replace(self, **changes)


class GPTOutput(NamedTuple):
    logits: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...] | None = None  # embeddings, then every block's output
    attentions: tuple[torch.Tensor, ...] | None = None  # [B, H, T, T] per block


class Attention(nn.Module):
    """Causal multi-head self-attention. ``num_heads`` is the number of heads this module
    computes; tensor parallelism divides it together with the q/k/v output features."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.num_heads, self.head_dim = heads, dim // heads
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(dim, dim) for _ in range(3))
        self.o_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, output_attentions: bool = False):
        batch, length, _ = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, length, -1, self.head_dim).transpose(1, 2)

        q, k, v = heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x))
        weights = None
        if output_attentions:  # explicit softmax so the map can be returned
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)
            causal = torch.ones(length, length, dtype=torch.bool, device=x.device).tril()
            weights = scores.masked_fill(~causal, float("-inf")).softmax(-1)
            y = weights @ v
        else:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(y.transpose(1, 2).reshape(batch, length, -1)), weights


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.up_proj, self.down_proj = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.gelu(self.up_proj(x)))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.input_layernorm = nn.LayerNorm(config.dim)
        self.self_attn = Attention(config.dim, config.heads)
        self.post_attention_layernorm = nn.LayerNorm(config.dim)
        self.mlp = MLP(config.dim, config.mlp_ratio * config.dim)

    def forward(self, x: torch.Tensor, output_attentions: bool = False):
        attended, weights = self.self_attn(self.input_layernorm(x), output_attentions)
        x = x + attended
        return x + self.mlp(self.post_attention_layernorm(x)), weights


class GPT(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.dim)
        self.embed_positions = nn.Embedding(config.context, config.dim)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.layers))
        self.norm = nn.LayerNorm(config.dim)
        self.lm_head = nn.Linear(config.dim, config.vocab_size, bias=False)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, input_ids: torch.Tensor, output_hidden_states: bool = False,
                output_attentions: bool = False) -> GPTOutput:
        if input_ids.dim() != 2 or input_ids.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"input_ids must be [batch, length] integer token ids, got {input_ids.dtype} "
                             f"{tuple(input_ids.shape)}")
        length = input_ids.shape[1]
        if length > self.config.context:
            raise ValueError(f"input length {length} exceeds the model's context {self.config.context}")
        positions = torch.arange(length, device=input_ids.device)
        x = self.embed_tokens(input_ids) + self.embed_positions(positions)
        hidden, attentions = [x], []
        for block in self.layers:
            x, weights = block(x, output_attentions)
            hidden.append(x)
            attentions.append(weights)
        logits = self.lm_head(self.norm(x))
        return GPTOutput(logits, tuple(hidden) if output_hidden_states else None,
                         tuple(attentions) if output_attentions else None)


def stdlib_source_bytes(max_bytes: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, validation) uint8 byte streams of the Python standard library's top-level
    modules, in name order; every tenth file goes to validation, so the two never share a
    file. Always present, nothing to download."""
    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
    if not files:
        raise FileNotFoundError("no Python standard-library sources found next to this interpreter")
    train, validation = bytearray(), bytearray()
    for i, path in enumerate(files):
        (validation if i % 10 == 9 else train).extend(path.read_bytes())
        if max_bytes is not None and len(train) >= max_bytes:
            break
    # torch.frombuffer refuses an empty buffer: validation is empty when max_bytes stops
    # the walk before the tenth file
    return tuple(torch.frombuffer(stream, dtype=torch.uint8).clone() if stream else torch.empty(0, dtype=torch.uint8)
                 for stream in (train, validation))


def lm_batch(stream: torch.Tensor, index: int, batch_size: int, length: int, seed: int = 0):
    """Batch ``index`` of random windows from a 1-D token stream: (inputs, next-token labels),
    both [batch_size, length] int64. The same (index, seed) always gives the same batch."""
    if stream.numel() <= length + 1:
        raise ValueError(f"stream of {stream.numel()} tokens is too short for windows of {length} + 1")
    generator = torch.Generator().manual_seed(seed * 1_000_003 + index)
    starts = torch.randint(0, stream.numel() - length, (batch_size,), generator=generator)  # the last ends at the end
    windows = torch.stack([stream[s:s + length + 1] for s in starts.tolist()]).long()
    return windows[:, :-1], windows[:, 1:]


def model_device(model: nn.Module) -> torch.device:
    """Where a model's first parameter (or, with none, its first buffer) lives."""
    return next(itertools.chain(model.parameters(), model.buffers())).device


@torch.no_grad()
def evaluate_perplexity(model: nn.Module, stream: torch.Tensor, length: int, batch_size: int = 8,
                        max_windows: int | None = None) -> float:
    """Perplexity of a causal LM (returning logits or an object with ``.logits``) over a 1-D
    token stream, in consecutive non-overlapping windows of ``length`` predictions; a
    shorter last window counts too. ``max_windows`` stops early. Windows are moved to the
    model's device."""
    if stream.dim() != 1 or stream.numel() < 2:
        raise ValueError(f"stream must be 1-D with at least 2 tokens, got shape {tuple(stream.shape)}")
    for name, value in (("length", length), ("batch_size", batch_size), ("max_windows", max_windows)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    starts = list(range(0, stream.numel() - 1, length))[:max_windows]
    full = [s for s in starts if s + length < stream.numel()]
    batches = [full[i:i + batch_size] for i in range(0, len(full), batch_size)]
    batches += [[s] for s in starts[len(full):]]  # the short last window, alone
    was_training = model.training
    device = model_device(model)
    model.eval()
    total, count = 0.0, 0
    try:
        for batch in batches:
            chunk = torch.stack([stream[s:s + length + 1] for s in batch]).long().to(device)
            logits = model(chunk[:, :-1])
            logits = logits.logits if hasattr(logits, "logits") else logits
            total += F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), chunk[:, 1:].reshape(-1),
                                     reduction="sum").item()
            count += chunk[:, 1:].numel()
    finally:  # an interrupted evaluation leaves the model in the mode it came in
        model.train(was_training)
    return math.exp(total / count)
