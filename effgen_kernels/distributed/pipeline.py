"""Layer-wise model parallelism: a GPT-style model (effgen_kernels.gpt.GPT, or a Hugging
Face causal LM of the Llama family such as SmolLM2, Mistral, Qwen or Phi-3) cut into
pipeline stages, trained with micro-batches by PyTorch's own ``torch.distributed.pipelining``
schedules (GPipe, 1F1B).

A stage is a contiguous slice of the model: the first also embeds the tokens, the last
also applies the final norm and the LM head. Stages run whatever modules the model holds,
so quantized (``quantize_``) and trainable quantized (``prepare``) layers work inside them,
and a distillation loss can be the schedule's ``loss_fn`` (see ``distillation_loss_fn``).
``pipeline_generate`` decodes through the stages of a Hugging Face model (greedy or
sampled, a KV cache on each stage).
"""

from __future__ import annotations

import copy
import inspect
import json
import os

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.pipelining import PipelineStage, ScheduleGPipe

from .beam_search import BeamSearch


def stage_layer_ranges(num_layers: int, num_stages: int) -> list[range]:
    """Blocks per stage, as even as possible (earlier stages take the remainder)."""
    if not 1 <= num_stages <= num_layers:
        raise ValueError(f"num_stages ({num_stages}) must lie in [1, number of layers ({num_layers})]")
    base, extra = divmod(num_layers, num_stages)
    ranges, start = [], 0
    for stage in range(num_stages):
        size = base + (1 if stage < extra else 0)
        ranges.append(range(start, start + size))
        start += size
    return ranges


class GPTStage(nn.Module):
    """Blocks ``layers`` of a GPT (effgen_kernels.gpt.GPT or the same layout), plus the
    embeddings on the first stage and the norm and LM head on the last. It shares the
    model's modules (no copy): train the stage, and the model's weights change."""

    def __init__(self, model: nn.Module, layers: range, first: bool, last: bool) -> None:
        super().__init__()
        self.first, self.last = first, last
        if first:
            self.embed_tokens, self.embed_positions = model.embed_tokens, model.embed_positions
        self.layers = nn.ModuleList(model.layers[i] for i in layers)
        if last:
            self.norm, self.lm_head = model.norm, model.lm_head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.first:
            positions = torch.arange(x.shape[1], device=x.device)
            x = self.embed_tokens(x) + self.embed_positions(positions)
        for block in self.layers:
            x, _ = block(x)
        return self.lm_head(self.norm(x)) if self.last else x


# Hugging Face decoder-only families whose model.model runs embed_tokens, then every decoder
# layer with one shared rotary embedding and its attention type's causal mask, then norm, and
# whose causal LM applies lm_head alone: the layout DecoderStage follows. Each is checked
# against the whole model's logits (tests/test_tensor_parallel.py); others get a TypeError
# rather than a stage that may differ (Gemma 2 caps its logits, Granite scales them, ...).
DECODER_MODEL_TYPES = ("llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "phi3", "gemma", "olmo2",
                       "stablelm")


def _attention_type(config, layer: int) -> str:
    """The mask layer ``layer`` attends with, as its model's forward picks it: from
    config.layer_types where the config has them (Qwen2's sliding-window layers), else a
    sliding window for every layer where config.sliding_window is set (Mistral, Phi-3)."""
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None:
        return layer_types[layer]
    return "full_attention" if getattr(config, "sliding_window", None) is None else "sliding_attention"


class DecoderStage(nn.Module):
    """Decoder layers ``layers`` of a Hugging Face decoder-only causal LM of one of
    DECODER_MODEL_TYPES (Llama and its kin: model.model holds embed_tokens, layers, norm and
    rotary_emb; model.lm_head), plus the embeddings on the first stage and the norm and LM
    head on the last. Every stage makes the rotary position embeddings and the causal masks
    (full, or sliding-window per layer) of its input as the model's forward does
    (transformers 5): for whole sequences from position 0 (training and scoring under a
    schedule), or, with a KV ``cache`` (pipeline_generate), the tokens after those it holds;
    with an ``attention_mask`` for padded batches. Shares the model's modules, as GPTStage
    does, and its ``generation_config`` (``generation_options`` reads it for pipeline_generate)."""

    def __init__(self, model: nn.Module, layers: range, first: bool, last: bool) -> None:
        super().__init__()
        inner = model.model
        self.config, self.first, self.last = inner.config, first, last
        self.generation_config = getattr(model, "generation_config", None)
        if first:
            self.embed_tokens = inner.embed_tokens
        self.rotary_emb = inner.rotary_emb
        self.layers = nn.ModuleList(inner.layers[i] for i in layers)
        self.layer_indices = list(layers)
        self.attention_types = [_attention_type(self.config, i) for i in layers]
        # each mask kind sized against this stage's first layer of it: a cache's other layers
        # belong to other stages and stay empty here
        self.first_layer_of = {kind: index for index, kind in reversed(list(zip(layers, self.attention_types,
                                                                                strict=True)))}
        if last:
            self.norm, self.lm_head = inner.norm, model.lm_head

    def _masks(self, x: torch.Tensor, positions: torch.Tensor, cache, attention_mask: torch.Tensor | None) -> dict:
        from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

        make = {"full_attention": create_causal_mask, "sliding_attention": create_sliding_window_causal_mask}
        return {kind: make[kind](config=self.config, inputs_embeds=x, attention_mask=attention_mask, cache=cache,
                                 position_ids=positions, layer_idx=index)
                for kind, index in self.first_layer_of.items()}

    def forward(self, x: torch.Tensor, cache=None, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Token ids (first stage) or hidden states [B, T, ...] in; hidden states or, on the
        last stage, logits out. With ``cache`` (a transformers Cache for the whole model) the
        input follows the tokens the cache holds for this stage's layers, which it adds.
        ``attention_mask`` [B, cached + T] (1: a token, 0: padding, as a tokenizer pads)
        covers the cached tokens and the input; each token's position counts the tokens
        before it, padding left out, as ``model.generate`` numbers a left-padded prompt."""
        if self.first:
            x = self.embed_tokens(x)
        start = 0 if cache is None else cache.get_seq_length(self.layer_indices[0])
        if attention_mask is None:
            positions = torch.arange(start, start + x.shape[1], device=x.device).unsqueeze(0)
        else:
            positions = _positions_of(attention_mask, x.shape[:2], start)
        masks = self._masks(x, positions, cache, attention_mask)
        position_embeddings = self.rotary_emb(x, position_ids=positions)
        for layer, kind in zip(self.layers, self.attention_types, strict=True):
            x = layer(x, attention_mask=masks[kind], position_ids=positions, position_embeddings=position_embeddings,
                      cache=cache, use_cache=cache is not None)
        return self.lm_head(self.norm(x)) if self.last else x


def _positions_of(attention_mask: torch.Tensor, shape: torch.Size, cached: int) -> torch.Tensor:
    """The positions [B, T] of the last T tokens under a padding mask [B, cached + T]: the
    number of tokens before each, padding 0 (transformers' numbering in generate)."""
    if attention_mask.shape != (shape[0], cached + shape[1]):
        raise ValueError(f"attention_mask must be [batch, cached + new tokens] = [{shape[0]}, {cached + shape[1]}], "
                         f"got {list(attention_mask.shape)}")
    positions = (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)
    return positions[:, cached:]


def _is_hf_decoder(model: nn.Module) -> bool:
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    return model_type in DECODER_MODEL_TYPES and hasattr(model, "lm_head") and hasattr(model, "model")


def gpt_stage(model: nn.Module, stage_index: int, num_stages: int) -> GPTStage | DecoderStage:
    """This rank's slice of ``model`` for a ``num_stages``-deep pipeline: a GPTStage of an
    effgen_kernels.gpt.GPT, a DecoderStage of a Hugging Face causal LM of DECODER_MODEL_TYPES."""
    if not 0 <= stage_index < num_stages:
        raise ValueError(f"stage_index ({stage_index}) must lie in [0, num_stages ({num_stages}))")
    if _is_hf_decoder(model):
        stage, blocks = DecoderStage, model.model.layers
    elif isinstance(getattr(model, "layers", None), nn.ModuleList) and hasattr(model, "embed_positions"):
        stage, blocks = GPTStage, model.layers
    else:
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        raise TypeError(f"pipeline stages are cut from an effgen_kernels.gpt.GPT or a Hugging Face causal LM whose "
                        f"config.model_type is one of {', '.join(DECODER_MODEL_TYPES)}, not {type(model).__name__}"
                        + (f" (model_type {model_type!r})" if model_type else ""))
    layers = stage_layer_ranges(len(blocks), num_stages)[stage_index]
    return stage(model, layers, stage_index == 0, stage_index == num_stages - 1)


_STAGE_KINDS = ("middle", "first", "last", "whole model")


def _stage_code(first: bool, last: bool) -> int:
    """The stage's kind as an index into _STAGE_KINDS (a number, to all-gather)."""
    return int(first) + 2 * int(last)


def _stage_kind(first: bool, last: bool) -> str:
    return _STAGE_KINDS[_stage_code(first, last)]


def _check_stage_order(stages: list[DecoderStage], ranks: list[int], group, device, caller: str) -> None:
    """Every rank of the group learns every rank's stages (kind and layers) and raises the
    same error where they do not make one pipeline in placement order (stage i on rank i mod
    size): first, middle ..., last, each starting at the layer after the one before ends
    (one rank alone raising would leave the others waiting on it for ever)."""
    count = torch.tensor([len(stages)], device=device)
    counts = [torch.empty_like(count) for _ in ranks]
    dist.all_gather(counts, count, group=group)
    if len({int(c) for c in counts}) > 1:
        raise ValueError(f"{caller}: the ranks of the group hold {[int(c) for c in counts]} stages: each must hold "
                         f"as many")
    mine = torch.tensor([[_stage_code(s.first, s.last), s.layer_indices[0], s.layer_indices[-1] + 1] for s in stages],
                        device=device)
    every = [torch.empty_like(mine) for _ in ranks]
    dist.all_gather(every, mine, group=group)
    size, num_stages, next_layer = len(ranks), len(ranks) * len(stages), 0
    placement = "rank i of the group must hold stage i" if len(stages) == 1 else \
        "rank r of the group must hold stages r, r + size, ... in that order"
    for i in range(num_stages):
        code, start, end = (int(v) for v in every[i % size][i // size])
        holder = f"rank {ranks[i % size]}" + (f"'s stage {i // size}" if len(stages) > 1 else "")
        if _STAGE_KINDS[code] != _stage_kind(i == 0, i == num_stages - 1):
            raise ValueError(f"{caller}: {holder} is stage {i} of {num_stages} in the group, but holds a "
                             f"{_STAGE_KINDS[code]} stage ({placement})")
        if start != next_layer:
            raise ValueError(f"{caller}: {holder} is stage {i} of {num_stages} in the group, holding layers "
                             f"{start}..{end - 1}, but the stage before ends at layer {next_layer - 1} (stages cut "
                             f"for different numbers of stages?)")
        next_layer = end


def _sampling_warpers(temperature: float, top_k: int | None, top_p: float | None, min_p: float | None,
                      min_tokens_to_keep: int) -> list:
    """transformers' sampling warpers, in its order: temperature, then top-k, top-p and
    min-p, each keeping at least ``min_tokens_to_keep`` tokens (generate keeps one more than
    the eos tokens when it samples beams, so that a beam may go on)."""
    from transformers.generation.logits_process import (
        MinPLogitsWarper,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    warpers = []
    if temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(temperature))
    if top_k is not None:
        warpers.append(TopKLogitsWarper(top_k, min_tokens_to_keep=min_tokens_to_keep))
    if top_p is not None and top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p, min_tokens_to_keep=min_tokens_to_keep))
    if min_p is not None:
        warpers.append(MinPLogitsWarper(min_p, min_tokens_to_keep=min_tokens_to_keep))
    return warpers


def _check_sampling(temperature: float, top_k: int | None, top_p: float | None, min_p: float | None) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1 (or None: all tokens), got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must lie in (0, 1] (or None), got {top_p}")
    if min_p is not None and not 0 <= min_p <= 1:
        raise ValueError(f"min_p must lie in [0, 1] (or None), got {min_p}")


@torch.no_grad()
def pipeline_generate(stage: DecoderStage | list[DecoderStage], input_ids: torch.Tensor, max_new_tokens: int,
                      group=None, eos_token_id: int | list[int] | None = None, *,
                      attention_mask: torch.Tensor | None = None, do_sample: bool = False, temperature: float = 1.0,
                      top_k: int | None = None, top_p: float | None = None, min_p: float | None = None,
                      generator: torch.Generator | None = None, num_beams: int = 1, length_penalty: float = 1.0,
                      early_stopping: bool | str = False, num_return_sequences: int = 1,
                      repetition_penalty: float = 1.0, no_repeat_ngram_size: int = 0, min_new_tokens: int = 0,
                      logits_processor=None, pad_token_id: int | None = None) -> torch.Tensor:
    """Decoding through a pipeline whose rank i of ``group`` (default: the world) holds
    stage i, a DecoderStage (``gpt_stage(model, i, size)``): each stage keeps the KV cache
    of its own layers, passes its hidden states on, and the last picks each next token and
    hands it to every rank. Every rank calls it with the same prompt ``input_ids`` [B, T]
    and gets back [B, T + new], as ``model.generate(input_ids, ...)`` gives: greedy, or
    with ``do_sample`` drawn after ``temperature``, ``top_k``, ``top_p`` and ``min_p`` as
    transformers draws (the last stage's ``generator``, or torch's global one, supplies the
    randomness). Prompts of different lengths come padded on the left with their
    ``attention_mask`` [B, T] (a tokenizer's, ``padding_side="left"``). After
    ``eos_token_id`` (or any of a list of them, as a chat model's generation_config may hold)
    a sequence emits ``pad_token_id`` (default: the first eos token), as generate pads it,
    and the loop ends early once all have. A list of stages: the rank's several stages, placed in a loop as
    ``pipeline_stages`` places them (rank i of n holds stages i, i + n, ...), one KV cache
    holding all their layers.

    ``num_beams`` > 1 searches beams as ``generate(num_beams=..., length_penalty=...,
    early_stopping=..., num_return_sequences=...)`` does (BeamSearch, on the last stage's
    rank; every rank reorders its cache as told): the best ``num_return_sequences`` of each
    prompt, in a row [B x num_return_sequences, T + new], a sequence that ended early
    padded. With ``do_sample`` the beams' continuations are drawn after the warpers, as
    generate's beam sampling draws them.

    ``repetition_penalty``, ``no_repeat_ngram_size`` and ``min_new_tokens`` (no eos before
    that many) as generate takes them (the penalty spares a prompt's padding);
    ``logits_processor``: a transformers LogitsProcessorList the last stage's rank applies to
    each step's scores given the tokens so far, after those and before picking, sampling's
    warpers or the beams' sums, as ``generate(logits_processor=...)`` applies it.
    ``generation_options(generation_config)`` gives a model's generation_config as these
    options."""
    stages = _stages_of(stage, "pipeline_generate")
    _check_inputs(input_ids, attention_mask)
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if do_sample:
        _check_sampling(temperature, top_k, top_p, min_p)
    _check_beams(num_beams, num_return_sequences)
    _check_penalties(repetition_penalty, no_repeat_ngram_size, min_new_tokens)
    if attention_mask is not None and not bool(attention_mask[:, -1].bool().all()):
        raise ValueError("attention_mask: every prompt must end with a token, padding on the left only (a tokenizer's "
                         "padding_side='left'); a right-padded prompt would continue from its padding")
    eos = None if eos_token_id is None else torch.tensor(eos_token_id, device=input_ids.device).reshape(-1)
    if eos is not None and eos.numel() == 0:
        raise ValueError("eos_token_id must be a token id, a non-empty list of them, or None")
    from transformers import DynamicCache
    from transformers.generation.logits_process import LogitsProcessorList

    ranks, indices = _place_in_pipeline(stages, group, input_ids.device, "pipeline_generate")
    # generate's order: its own processors, the caller's, then sampling's warpers
    processors = _generate_processors(input_ids, attention_mask, eos, num_beams, repetition_penalty,
                                      no_repeat_ngram_size, min_new_tokens)
    processors += logits_processor or []
    if do_sample:  # sampled beams keep a token more than the eos tokens, so that a beam may go on
        keep = 1 if num_beams == 1 else 1 + (1 if eos is None else eos.numel())
        processors += _sampling_warpers(temperature, top_k, top_p, min_p, keep)
    logits_processor = LogitsProcessorList(processors) if processors else None
    if pad_token_id is None and eos is not None:
        pad_token_id = int(eos[0])  # as generate pads when told no pad token
    if num_beams > 1:
        return _beam_decode(stages, indices, ranks, group, input_ids, attention_mask, max_new_tokens,
                            num_return_sequences, num_beams, eos=eos, length_penalty=length_penalty,
                            early_stopping=early_stopping, logits_processor=logits_processor, do_sample=do_sample,
                            generator=generator, pad_token_id=pad_token_id)
    cache, tokens, step_input = DynamicCache(config=stages[0].config), input_ids, input_ids
    finished = None if eos is None else torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
    for _ in range(max_new_tokens):
        x = _through_stages(stages, indices, step_input, cache, attention_mask, ranks, group)
        next_token = torch.empty(input_ids.shape[0], dtype=input_ids.dtype, device=input_ids.device)
        if stages[-1].last:
            scores = x[:, -1].float()
            if logits_processor is not None:
                scores = logits_processor(tokens, scores)
            if do_sample:  # one draw a row, as generate's sampling draws
                next_token.copy_(torch.multinomial(nn.functional.softmax(scores, dim=-1), 1, generator=generator)[:, 0])
            else:
                next_token.copy_(scores.argmax(dim=-1))
        dist.broadcast(next_token, ranks[-1], group=group)
        if eos is not None:
            # a finished sequence goes on with padding, as generate pads it
            next_token = next_token.masked_fill(finished, pad_token_id)
            finished = finished | torch.isin(next_token, eos)
        tokens = torch.cat([tokens, next_token[:, None]], dim=1)
        if finished is not None and bool(finished.all()):
            break
        step_input = next_token[:, None]
        attention_mask = _one_token_more(attention_mask)
    return tokens


def _generate_processors(input_ids: torch.Tensor, attention_mask: torch.Tensor | None, eos: torch.Tensor | None,
                         num_beams: int, repetition_penalty: float, no_repeat_ngram_size: int,
                         min_new_tokens: int) -> list:
    """generate's own processors, where asked for, in its order: the repetition penalty
    (sparing each prompt's left padding, a row a beam), the n-gram ban, and no eos before
    ``min_new_tokens`` new tokens."""
    from transformers.generation.logits_process import (
        MinNewTokensLengthLogitsProcessor,
        NoRepeatNGramLogitsProcessor,
        RepetitionPenaltyLogitsProcessor,
    )

    processors = []
    if repetition_penalty != 1.0:
        padding = None  # a row's first token's position: its padding goes unpenalized
        if attention_mask is not None:
            padding = attention_mask.int().argmax(dim=1).repeat_interleave(num_beams)
        processors.append(RepetitionPenaltyLogitsProcessor(float(repetition_penalty), prompt_ignore_length=padding))
    if no_repeat_ngram_size > 0:
        processors.append(NoRepeatNGramLogitsProcessor(no_repeat_ngram_size))
    if min_new_tokens > 0 and eos is not None:
        processors.append(MinNewTokensLengthLogitsProcessor(input_ids.shape[1], min_new_tokens, eos))
    return processors


def _check_penalties(repetition_penalty: float, no_repeat_ngram_size: int, min_new_tokens: int) -> None:
    if not repetition_penalty > 0:
        raise ValueError(f"repetition_penalty must be > 0 (1.0: none), got {repetition_penalty}")
    for name, value in (("no_repeat_ngram_size", no_repeat_ngram_size), ("min_new_tokens", min_new_tokens)):
        if not (isinstance(value, int) and value >= 0):
            raise ValueError(f"{name} must be an int >= 0 (0: none), got {value!r}")


def _check_beams(num_beams: int, num_return_sequences: int) -> None:
    if num_beams < 1:
        raise ValueError(f"num_beams must be >= 1, got {num_beams}")
    if not 1 <= num_return_sequences <= num_beams:
        raise ValueError(f"num_return_sequences must lie in [1, num_beams ({num_beams})], got {num_return_sequences}")


def _one_token_more(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """The padding mask with a column of ones for the token each sequence just got."""
    if attention_mask is None:
        return None
    return torch.cat([attention_mask, attention_mask.new_ones(attention_mask.shape[0], 1)], dim=1)


def _beam_decode(stages: list[DecoderStage], indices: list[int], ranks: list[int], group, input_ids: torch.Tensor,
                 attention_mask: torch.Tensor | None, max_new_tokens: int, num_return_sequences: int,
                 num_beams: int, **search_options) -> torch.Tensor:
    """Beam search through the stages: every rank runs its stages on the running beams (each
    prompt's num_beams rows in a row), the last stage's rank's BeamSearch (made with
    ``search_options``) picks the next tokens and the cache rows they continue, which every
    rank receives (with whether the search is over), and at the end the sequences found."""
    from transformers import DynamicCache

    if max_new_tokens == 0:
        return input_ids.repeat_interleave(num_return_sequences, dim=0)
    step_input = input_ids.repeat_interleave(num_beams, dim=0)
    search = BeamSearch(step_input, num_beams, max_new_tokens, **search_options) if stages[-1].last else None
    if attention_mask is not None:
        attention_mask = attention_mask.repeat_interleave(num_beams, dim=0)
    rows, cache = step_input.shape[0], DynamicCache(config=stages[0].config)
    for _ in range(max_new_tokens):
        x = _through_stages(stages, indices, step_input, cache, attention_mask, ranks, group)
        message = torch.empty(2 * rows + 1, dtype=torch.long, device=input_ids.device)  # tokens, cache rows, over
        if search is not None:
            next_tokens, cache_rows, over = search.step(x[:, -1])
            message.copy_(torch.cat([next_tokens, cache_rows.long(), torch.tensor([int(over)], device=x.device)]))
        dist.broadcast(message, ranks[-1], group=group)
        if bool(message[-1]):
            break
        cache.reorder_cache(message[rows:2 * rows])
        step_input, attention_mask = message[:rows, None], _one_token_more(attention_mask)
    found = search.result(num_return_sequences) if search is not None else None
    length = torch.tensor([0 if found is None else found.shape[1]], device=input_ids.device)
    dist.broadcast(length, ranks[-1], group=group)
    tokens = torch.empty(input_ids.shape[0] * num_return_sequences, int(length), dtype=input_ids.dtype,
                         device=input_ids.device)
    if found is not None:
        tokens.copy_(found)
    dist.broadcast(tokens, ranks[-1], group=group)
    return tokens


@torch.no_grad()
def pipeline_forward(stage: DecoderStage | list[DecoderStage], input_ids: torch.Tensor, group=None, *,
                     attention_mask: torch.Tensor | None = None) -> torch.Tensor | None:
    """The model's logits [B, T, vocab] for ``input_ids`` [B, T], computed through a
    pipeline whose rank i of ``group`` (default: the world) holds stage i, a DecoderStage
    (or, a list, stages i, i + n, ... of n ranks, as ``pipeline_stages`` places them): on
    the last stage's rank, None on the others. Every rank calls it with the same
    ``input_ids`` (and ``attention_mask`` for a padded batch). For scoring (a validation
    loss, perplexity) with no rank holding the whole model."""
    stages = _stages_of(stage, "pipeline_forward")
    _check_inputs(input_ids, attention_mask)
    ranks, indices = _place_in_pipeline(stages, group, input_ids.device, "pipeline_forward")
    logits = _through_stages(stages, indices, input_ids, None, attention_mask, ranks, group)
    return logits if stages[-1].last else None


def _stages_of(stage: DecoderStage | list[DecoderStage], caller: str) -> list[DecoderStage]:
    """The rank's stages: the one given, or the list."""
    stages = list(stage) if isinstance(stage, (list, tuple)) else [stage]
    if not stages:
        raise ValueError(f"{caller}: the list of stages is empty")
    for one in stages:
        if not isinstance(one, DecoderStage):
            raise TypeError(f"{caller} runs DecoderStages (of Hugging Face models), not {type(one).__name__}")
    return stages


def _check_inputs(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> None:
    if input_ids.dim() != 2 or input_ids.shape[1] == 0:
        raise ValueError(f"input_ids must be token ids [batch, length >= 1], got shape {tuple(input_ids.shape)}")
    if attention_mask is not None:
        _check_mask(attention_mask, input_ids)


def _place_in_pipeline(stages: list[DecoderStage], group, device: torch.device, caller: str
                       ) -> tuple[list[int], list[int]]:
    """The ranks of the pipeline's group and the index of each of this rank's stages in the
    pipeline (rank i of n holding stages i, i + n, ...), once every rank has checked that
    they hold the stages in order."""
    ranks = dist.get_process_group_ranks(group) if group is not None else list(range(dist.get_world_size()))
    if dist.get_rank() not in ranks:
        raise ValueError(f"{caller}: rank {dist.get_rank()} is not in the group {ranks}")
    _check_stage_order(stages, ranks, group, device, caller)
    index = ranks.index(dist.get_rank())
    return ranks, [index + k * len(ranks) for k in range(len(stages))]


def _through_stages(stages: list[DecoderStage], indices: list[int], tokens: torch.Tensor, cache,
                    attention_mask: torch.Tensor | None, ranks: list[int], group) -> torch.Tensor:
    """This rank's stages run in turn on their share of the pipeline's step for ``tokens``
    [B, T], each on the tokens (the first stage), on the hidden states received from the
    rank of the stage before, or, one rank holding every stage, on its own stage's before;
    each one's output is sent on to the next stage's rank. The last one's output is
    returned (the logits, on the last stage's rank)."""
    x, size = tokens, len(ranks)
    for stage, index in zip(stages, indices, strict=True):
        if not stage.first and size > 1:
            hidden_dtype = next(p.dtype for p in stage.parameters() if p.is_floating_point())
            x = torch.empty(*tokens.shape, stage.config.hidden_size, dtype=hidden_dtype, device=tokens.device)
            dist.recv(x, ranks[(index - 1) % size], group=group)
        x = stage(x, cache, attention_mask)
        if not stage.last and size > 1:
            dist.send(x.contiguous(), ranks[(index + 1) % size], group=group)
    return x


def _check_mask(attention_mask: torch.Tensor, input_ids: torch.Tensor) -> None:
    """A padding mask of input_ids' shape and device, 0 / 1."""
    if attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask must have input_ids' shape {list(input_ids.shape)}, "
                         f"got {list(attention_mask.shape)}")
    if attention_mask.device != input_ids.device:
        raise ValueError(f"attention_mask is on {attention_mask.device}, input_ids on {input_ids.device}")
    if not bool(((attention_mask == 0) | (attention_mask == 1)).all()):
        raise ValueError("attention_mask must hold 0 (padding) and 1 (a token) only")


def _checkpoint_files(path: str) -> dict[str, str]:
    """Tensor name -> safetensors file of a Hugging Face checkpoint folder (one file, or the
    shards its index names)."""
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            return {name: os.path.join(path, file) for name, file in json.load(f)["weight_map"].items()}
    single = os.path.join(path, "model.safetensors")
    if not os.path.exists(single):
        raise FileNotFoundError(f"{path} holds no model.safetensors (nor its index): load_stage reads safetensors "
                                f"checkpoints, as save_pretrained writes them")
    from safetensors import safe_open

    with safe_open(single, "pt") as f:
        return dict.fromkeys(f.keys(), single)


def load_stage(path: str, stage_index: int, num_stages: int, dtype: torch.dtype = torch.float32) -> DecoderStage:
    """Stage ``stage_index`` of ``num_stages`` of the Hugging Face causal LM saved at
    ``path`` (a safetensors checkpoint of one of DECODER_MODEL_TYPES), with only that
    stage's weights read and held: the model is built on the meta device, and the stage's
    tensors alone are made and filled from the checkpoint, so each rank of a pipeline needs
    memory for its share of the model only. For pipeline_generate (or quantize_ it first),
    or pipeline_stage to train it. The checkpoint's tensors bear the model's names (as
    save_pretrained writes them), or, for Mixtral and Qwen2-MoE, each expert's matrices
    apart, as those checkpoints store them: stacked here as transformers stacks them. The
    stage's generation_config is the checkpoint's generation_config.json where it has one,
    as from_pretrained reads it."""
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    files, config = _checkpoint_files(path), AutoConfig.from_pretrained(path)
    if config.model_type not in DECODER_MODEL_TYPES:
        raise TypeError(f"load_stage cuts causal LMs whose model_type is one of {', '.join(DECODER_MODEL_TYPES)}, "
                        f"not {config.model_type!r}")
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config).to(dtype)
    if os.path.isfile(os.path.join(path, "generation_config.json")):
        model.generation_config = GenerationConfig.from_pretrained(path)
    stage = gpt_stage(model, stage_index, num_stages)
    wanted = _names_in_model(model, stage)
    saved, state = set(model.state_dict()), {}
    for stage_name, names in wanted.items():
        tensor = _stored_tensor(names, files, config)
        if tensor is not None:
            state[stage_name] = tensor.to(dtype)
        elif saved.intersection(names):  # a checkpoint tensor (not a buffer made at init) that is missing
            raise KeyError(f"the checkpoint at {path} has no {names[0]}, which stage {stage_index} needs: its "
                           f"tensors are named otherwise than the model's (transformers converts some as it loads), "
                           f"which load_stage does not do for {config.model_type}; load the whole model and cut it "
                           f"with gpt_stage")
    tied = stage.first and stage.last and _tied_embedding(model) is not None
    stage.to_empty(device="cpu")
    if tied:  # to_empty gave the head a weight of its own
        stage.lm_head.weight = stage.embed_tokens.weight
    # what no checkpoint holds (rotary frequencies, Gemma's embedding scale) from the model's
    # own init, run on the modules that own such tensors only
    for owner in {name.rpartition(".")[0] for name in wanted if name not in state}:
        model._init_weights(stage.get_submodule(owner))
    stage.load_state_dict(state, strict=False)
    return stage.eval()


def save_stage(stage: DecoderStage | list[DecoderStage], path: str, group=None) -> None:
    """Write the pipeline's model to ``path`` as a sharded Hugging Face checkpoint, each rank
    of ``group`` (default: the world; rank i holding stage i) its own stage's shard and the
    first also the index, config.json and generation_config.json: what
    ``from_pretrained(path)`` and ``load_stage`` read, written with no rank holding the whole
    model (after pipeline training, say). Every rank calls it; it returns once the whole
    checkpoint is written. A list of stages: the rank's several stages, placed as
    ``pipeline_stages`` places them (rank i of n holds stages i, i + n, ...), a shard each.
    A tensor-parallel stage (a ("pp", "tp") mesh; ``group`` its "pp" group) is gathered
    whole over its tensor-parallel group, and the pipeline group of each one's first rank
    writes. Pipelines side by side for data parallelism (a ("dp", "pp") mesh) hold the same
    model: call it on one of them (the ranks of dp index 0), as the others would write the
    same files. Float stages only: a quantized layer's tensors have no place in the model's
    checkpoint (every rank raises)."""
    from safetensors.torch import save_file

    stages = _stages_of(stage, "save_stage")
    device = next(iter(stages[0].parameters())).device
    ranks, indices = _place_in_pipeline(stages, group, device, "save_stage")
    shards, tensor_parallel_group, model_class = [], None, None
    for one in stages:
        state, tensor_parallel_group = _unsharded_state(one)
        tensors, known, model_class = _checkpoint_tensors(one, state)
        shards.append((tensors, [name for name in tensors if name not in known]))
    # each stage's tensor names, bytes and names the model lacks, in pipeline order, before any is written
    every = [None] * len(ranks)
    dist.all_gather_object(every, [(list(tensors), sum(t.numel() * t.element_size() for t in tensors.values()),
                                    unknown) for tensors, unknown in shards], group=group)
    in_order = [every[i % len(ranks)][i // len(ranks)] for i in range(len(ranks) * len(stages))]
    for i, (_, _, unknown) in enumerate(in_order):
        if unknown:
            raise ValueError(f"save_stage: rank {ranks[i % len(ranks)]}'s stage holds {unknown[0]}, not one of the "
                             f"model's tensors (a quantized layer's? save_stage writes float stages: dequantize_ "
                             f"them first)")
    # the first rank of each tensor-parallel group writes (its pipeline group's are the others' copies)
    if tensor_parallel_group is None or dist.get_rank(tensor_parallel_group) == 0:
        os.makedirs(path, exist_ok=True)
        for (tensors, _), index in zip(shards, indices, strict=True):
            save_file(tensors, os.path.join(path, _shard_name(index, len(in_order))), metadata={"format": "pt"})
        if indices[0] == 0:
            _write_index(path, [names for names, _, _ in in_order], sum(size for _, size, _ in in_order))
            config = copy.deepcopy(stages[0].config)  # with what save_pretrained adds: the class, the dtype
            config.architectures = [model_class]
            config.dtype = next(iter(shards[0][0].values())).dtype
            config.save_pretrained(path)
            if stages[0].generation_config is not None:
                stages[0].generation_config.save_pretrained(path)
    dist.barrier(group=group)
    if tensor_parallel_group is not None:  # the other pipeline groups wait for the one writing
        dist.barrier(group=tensor_parallel_group)


def _shard_name(index: int, count: int) -> str:
    return f"model-{index + 1:05d}-of-{count:05d}.safetensors"


def _write_index(path: str, names_by_shard: list[list[str]], total_size: int) -> None:
    """model.safetensors.index.json, as save_pretrained writes it: which shard holds each tensor."""
    weight_map = {name: _shard_name(i, len(names_by_shard)) for i, names in enumerate(names_by_shard)
                  for name in names}
    with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total_size}, "weight_map": weight_map}, f, indent=2)


def _unsharded_state(stage: DecoderStage):
    """The stage's state dict, its tensor-parallel layers gathered whole (full_state_dict: a
    collective on their group), and that group (None for a stage without one)."""
    from .tensor_parallel import _parallel_layers, full_state_dict

    parallel = _parallel_layers(stage)
    if not parallel:
        return stage.state_dict(), None
    return full_state_dict(stage), parallel[0][1].group


def _checkpoint_tensors(stage: DecoderStage, state: dict[str, torch.Tensor]
                        ) -> tuple[dict[str, torch.Tensor], set[str], str]:
    """The tensors of the stage's (unsharded) ``state`` by their names in the whole model's
    checkpoint (its layers numbered as the model numbers them; a tied head's weight left to
    the embeddings), the names the model's checkpoint holds, and the model's class name."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(stage.config)
    tied = bool(getattr(stage.config, "tie_word_embeddings", False))
    tensors = {}
    for name, tensor in state.items():
        module, _, rest = name.partition(".")
        if module == "layers":
            layer, _, rest = rest.partition(".")
            name = f"model.layers.{stage.layer_indices[int(layer)]}.{rest}"
        elif module != "lm_head":
            name = f"model.{name}"
        elif tied:
            continue
        tensors[name] = tensor.detach().contiguous()
    return tensors, set(model.state_dict()), type(model).__name__


# Mixture-of-experts checkpoints keep each expert's matrices apart, where transformers 5's
# model stacks them: experts.gate_up_proj [experts, 2 x intermediate, hidden] (each expert's
# gate rows, then its up rows) and experts.down_proj [experts, hidden, intermediate]. Per
# family: the checkpoint's name for the layer's mlp, each expert's gate / up / down matrix,
# and the config's expert count.
_PER_EXPERT_CHECKPOINTS = {
    "mixtral": ("block_sparse_moe", ("w1", "w3", "w2"), "num_local_experts"),
    "qwen2_moe": ("mlp", ("gate_proj", "up_proj", "down_proj"), "num_experts"),
}


def _read(files: dict[str, str], name: str) -> torch.Tensor:
    from safetensors import safe_open

    with safe_open(files[name], "pt") as f:
        return f.get_tensor(name)


def _stored_tensor(names: list[str], files: dict[str, str], config) -> torch.Tensor | None:
    """The checkpoint's tensor for a model tensor of ``names`` (all its names in the model),
    under one of them or, in a per-expert checkpoint, made from the tensors it was cut
    into; None where the checkpoint has none."""
    stored = next((name for name in names if name in files), None)
    if stored is not None:
        return _read(files, stored)
    if config.model_type not in _PER_EXPERT_CHECKPOINTS:
        return None
    block, (gate, up, down), count = _PER_EXPERT_CHECKPOINTS[config.model_type]
    layer, _, rest = names[0].partition(".mlp.")
    if not rest:
        return None
    parts = {"experts.gate_up_proj": (gate, up), "experts.down_proj": (down,)}.get(rest)
    if parts is None:  # the router, a shared expert: renamed only
        stored = f"{layer}.{block}.{rest}"
        return _read(files, stored) if stored in files else None
    experts = [[f"{layer}.{block}.experts.{expert}.{part}.weight" for part in parts]
               for expert in range(getattr(config, count))]
    if not all(name in files for expert in experts for name in expert):
        return None
    return torch.stack([torch.cat([_read(files, name) for name in expert]) for expert in experts])


def _names_in_model(model: nn.Module, stage: nn.Module) -> dict[str, list[str]]:
    """Each of the stage's tensors (by its name in the stage) with all its names in the model
    (a tied head's weight has two: the head's and the embeddings')."""
    names = {}
    for name, tensor in [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]:
        names.setdefault(id(tensor), []).append(name)
    return {name: names[id(tensor)] for name, tensor in [*stage.named_parameters(), *stage.named_buffers()]}


def _tied_embedding(model: nn.Module) -> nn.Parameter | None:
    """The weight the LM head shares with the token embeddings (SmolLM2 ties them), or None."""
    inner = model.model if _is_hf_decoder(model) else model
    head, embed = getattr(model, "lm_head", None), getattr(inner, "embed_tokens", None)
    weight = getattr(head, "weight", None)
    return weight if weight is not None and weight is getattr(embed, "weight", None) else None


def pipeline_stage(model: nn.Module, stage_index: int, num_stages: int, device: torch.device | str = "cpu",
                   group=None, data_parallel_group=None) -> PipelineStage:
    """A torch.distributed.pipelining PipelineStage holding this rank's slice of ``model``
    (the whole model, cut here, or a DecoderStage already cut: ``load_stage``'s, so that no
    rank holds the whole model in training either); give it to a schedule
    (``pipeline_schedule``, or one of torch's directly). Feed the schedule contiguous token
    batches: torch 2.11's stages reject a strided view such as ``window[:, :-1]`` (stride
    mismatch), later versions accept it.

    Where the LM head shares its weight with the embeddings, the first and last stages each
    train a copy of it: call ``sync_tied_grads(stage)`` after every ``schedule.step`` and
    before the optimizer's step, which sums the two copies' gradients, so that they stay
    equal (the first and last ranks get a group of their own).

    On a ("dp", "pp") mesh, ``data_parallel_group`` (its "dp" group) replicates the stage
    over the data-parallel ranks, each fed its own share of the batch: the stage's module is
    wrapped in DistributedDataParallel over that group (``stage.submod``; register a
    communication hook on it, such as ``compressed_allreduce_hook``), and torch's schedules
    all-reduce its gradients once a step, in the last micro-batch's backward."""
    part, weight, ties = _stage_part(model, stage_index, num_stages)
    stage = _pipeline_stage(part, weight, stage_index, num_stages, device, group, data_parallel_group)
    stage.tied_group = _group_of_tied_copies(ties, num_stages, group)
    return stage


def pipeline_stages(model: nn.Module | list[DecoderStage], rank_index: int, world: int, stages_per_rank: int,
                    device: torch.device | str = "cpu", group=None, data_parallel_group=None) -> list[PipelineStage]:
    """This rank's ``stages_per_rank`` stages of a pipeline of ``world`` x ``stages_per_rank``
    stages placed in a loop (rank r holds stages r, r + world, ...), as torch's interleaved
    schedules (``ScheduleInterleaved1F1B``, ``ScheduleLoopedBFS``) expect: each rank waits
    less for the others than with one stage. ``model``: the whole model, cut here, or this
    rank's DecoderStages already cut, in that order (``load_stage``'s, so that no rank holds
    the whole model). Give the list to ``pipeline_schedule`` with such a schedule, and to
    ``sync_tied_grads``. ``group`` and ``data_parallel_group`` as for pipeline_stage."""
    if stages_per_rank < 1:
        raise ValueError(f"stages_per_rank must be >= 1, got {stages_per_rank}")
    if not 0 <= rank_index < world:
        raise ValueError(f"rank_index ({rank_index}) must lie in [0, world ({world}))")
    parts = list(model) if isinstance(model, (list, tuple)) else [model] * stages_per_rank
    if len(parts) != stages_per_rank:
        raise ValueError(f"pipeline_stages: {len(parts)} stages given, {stages_per_rank} a rank wanted")
    num_stages = world * stages_per_rank
    indices = [rank_index + k * world for k in range(stages_per_rank)]
    cut = [_stage_part(part, index, num_stages) for part, index in zip(parts, indices, strict=True)]  # all checked
    stages = [_pipeline_stage(part, weight, index, num_stages, device, group, data_parallel_group)
              for (part, weight, _), index in zip(cut, indices, strict=True)]
    tied_group = _group_of_tied_copies(cut[0][2], num_stages, group)  # one group: every rank pairs the same
    for stage in stages:
        stage.tied_group = tied_group
    return stages


def _stage_part(model: nn.Module, stage_index: int, num_stages: int) -> tuple[nn.Module, nn.Parameter | None, bool]:
    """Stage ``stage_index``'s module (cut from the model, or the DecoderStage given, checked
    to be that stage), its copy of a weight the head shares with the embeddings (None on a
    middle stage or an untied model), and whether the model ties them, which every rank knows."""
    if isinstance(model, DecoderStage):
        part = _stage_in_place(model, stage_index, num_stages)
        ties = bool(getattr(model.config, "tie_word_embeddings", False))
        weight = part.embed_tokens.weight if part.first else part.lm_head.weight if part.last else None
        return part, weight if ties else None, ties
    part, weight = gpt_stage(model, stage_index, num_stages), _tied_embedding(model)
    return part, weight, weight is not None


def _pipeline_stage(part: nn.Module, tied_weight: nn.Parameter | None, stage_index: int, num_stages: int, device,
                    group, data_parallel_group) -> PipelineStage:
    if data_parallel_group is not None:
        part = nn.parallel.DistributedDataParallel(part, process_group=data_parallel_group)
        # torch's stages run a DDP module's forwards and backwards in no_sync, except the last
        # micro-batch's backward, which they ready for the all-reduce themselves. torch 2.14's
        # stage also runs a forward outside no_sync to infer shapes, and DDP then expects the
        # next backward to reduce (the first micro-batch's, which would all-reduce a part of the
        # gradient and break the reducer's bucket order): the module's forwards never ready it.
        part.require_backward_grad_sync = False
    stage = PipelineStage(part, stage_index, num_stages, torch.device(device), group=group)
    stage.tied_weight = tied_weight
    return stage


def _group_of_tied_copies(ties: bool, num_stages: int, group):
    """The group of the ranks of the pipeline's first and last stages, which sync_tied_grads
    sums a tied weight's gradients over, on those two ranks; None on the others and where
    there is nothing to sum. Only the pair makes it (no call of the whole world), so a
    pipeline may be one of several (a mesh's "pp" group) or leave ranks out."""
    if not ties or num_stages == 1:
        return None
    ranks = dist.get_process_group_ranks(group) if group is not None else list(range(dist.get_world_size()))
    first_rank, last_rank = ranks[0], ranks[(num_stages - 1) % len(ranks)]  # stage i on rank i mod size
    # one rank holding both ends (stages in a loop over one rank) sums its copies itself (or holds one weight)
    if first_rank == last_rank or dist.get_rank() not in (first_rank, last_rank):
        return None
    return dist.new_group(sorted((first_rank, last_rank)), use_local_synchronization=True)


def _stage_in_place(stage: DecoderStage, stage_index: int, num_stages: int) -> DecoderStage:
    """A stage given already cut, checked to be the kind (first, middle, ...) and to hold the
    layers that stage_index of num_stages is."""
    if not 0 <= stage_index < num_stages:
        raise ValueError(f"stage_index ({stage_index}) must lie in [0, num_stages ({num_stages}))")
    wanted, given = _stage_kind(stage_index == 0, stage_index == num_stages - 1), _stage_kind(stage.first, stage.last)
    if given != wanted:
        raise ValueError(f"pipeline_stage: stage {stage_index} of {num_stages} is a {wanted} stage, but the "
                         f"DecoderStage given is a {given} stage (cut for another index)")
    layers = stage_layer_ranges(stage.config.num_hidden_layers, num_stages)[stage_index]
    if stage.layer_indices != list(layers):
        raise ValueError(f"pipeline_stage: stage {stage_index} of {num_stages} holds layers {layers[0]}..{layers[-1]}, "
                         f"but the DecoderStage given holds layers {stage.layer_indices[0]}.."
                         f"{stage.layer_indices[-1]} (cut for another index or number of stages)")
    return stage


def sync_tied_grads(stage: PipelineStage | list[PipelineStage]) -> None:
    """Sum the gradients of the first and last stages' copies of a weight the LM head shares
    with the embeddings (see pipeline_stage); nothing on other stages or untied models. A
    list: each of a rank's stages (pipeline_stages); where one rank holds both ends, loaded
    apart (load_stage), their two copies' gradients are summed on the rank."""
    stages = stage if isinstance(stage, list) else [stage]
    copies = [one.tied_weight for one in stages if (one.is_first or one.is_last) and one.tied_weight is not None]
    if len(copies) == 2 and copies[0] is not copies[1]:
        summed = _grad_or_zeros(copies[0]) + _grad_or_zeros(copies[1])
        copies[0].grad, copies[1].grad = summed, summed.clone()
    for one in stages:
        if one.tied_group is not None and (one.is_first or one.is_last):
            dist.all_reduce(_grad_or_zeros(one.tied_weight), group=one.tied_group)


def _grad_or_zeros(weight: nn.Parameter) -> torch.Tensor:
    """The weight's gradient, made zeros where it has none (a stage that did not use it)."""
    if weight.grad is None:
        weight.grad = torch.zeros_like(weight)
    return weight.grad


def pipeline_schedule(stage: PipelineStage | list[PipelineStage], n_microbatches: int, loss_fn,
                      schedule=ScheduleGPipe, **options):
    """torch's pipeline ``schedule`` (GPipe by default, or e.g. ``Schedule1F1B``) over
    ``stage`` (or a list of a rank's stages, pipeline_stages', for an interleaved schedule),
    training on the mean of ``loss_fn`` over the micro-batches, as the same loss on the
    whole batch in one process would, on every torch this package supports: torch 2.7+
    divides the summed gradients by ``n_microbatches`` itself (``scale_grads``), torch 2.6
    sums them, so there each micro-batch's loss passes its gradient back divided by
    ``n_microbatches`` (the losses the schedule reports keep their values)."""
    if "scale_grads" in inspect.signature(schedule).parameters:
        return schedule(stage, n_microbatches, loss_fn=loss_fn, scale_grads=True, **options)

    def mean_gradient_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = loss_fn(output, target)
        if loss.requires_grad:
            loss.register_hook(lambda grad: grad / n_microbatches)
        return loss

    return schedule(stage, n_microbatches, loss_fn=mean_gradient_loss, **options)


def next_token_loss_fn(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Schedule loss: ``tokens`` is the window the stage-0 input was cut from
    ([B, T + 1]); the logits predict tokens[:, 1:]."""
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), tokens[:, 1:].reshape(-1))


def distillation_loss_fn(teacher: nn.Module, loss):
    """Schedule loss for knowledge distillation inside a pipeline: the last stage runs the
    frozen ``teacher`` on the micro-batch's window and applies ``loss`` (a
    DistillationLoss) to the student's logits, the teacher's and the next-token labels."""
    teacher.eval().requires_grad_(False)

    def loss_fn(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            teacher_out = teacher(tokens[:, :-1])
        teacher_logits = teacher_out.logits if hasattr(teacher_out, "logits") else teacher_out
        return loss(logits, teacher_logits, tokens[:, 1:])

    return loss_fn
