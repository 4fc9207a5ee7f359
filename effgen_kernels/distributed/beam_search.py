"""Beam search as transformers 5's ``generate(num_beams=...)`` runs it (its
``GenerationMixin._beam_search``: the same candidates, stopping rules, length penalty and
early-stopping heuristic, so the same sequences), kept apart from the model: the caller runs
the model on the running beams and hands their next-token logits to ``step``, which says
which tokens to feed next and how to reorder the KV cache. pipeline_generate runs it on the
last stage's rank and broadcasts what ``step`` returns."""

from __future__ import annotations

import torch

# What a finished sequence or a candidate that may not go on scores, as transformers marks them.
_EXCLUDED = -1.0e9


def _gather_beams(tensor: torch.Tensor, beam_indices: torch.Tensor) -> torch.Tensor:
    """tensor [batch, beams, ...] at beam_indices [batch, k] along the beam dimension."""
    while beam_indices.dim() < tensor.dim():
        beam_indices = beam_indices.unsqueeze(-1)
    return torch.take_along_dim(tensor, beam_indices, dim=1)


class BeamSearch:
    """The beams of ``prompts`` [batch x num_beams, T] (each prompt repeated num_beams times
    in a row) for up to ``max_new_tokens``. Per beam: the running sequences and their summed
    log-probabilities; per prompt: the ``num_beams`` best finished sequences (ended by one of
    ``eos`` or by the length), scored by their sum over ``length ** length_penalty``.
    ``logits_processor`` (transformers') adjusts each step's log-probabilities given the
    running sequences, as generate's beam search applies it. ``do_sample``: the candidates
    are drawn (from ``generator``, else torch's global one) in proportion to their summed
    probabilities rather than taken best first, as ``generate(num_beams=..., do_sample=True)``
    draws them; sampling's warpers (temperature, top-k, top-p) go in ``logits_processor``.
    A sequence shorter than the longest is filled with ``pad_token_id`` (default: the first
    eos token), as generate fills it."""

    def __init__(self, prompts: torch.Tensor, num_beams: int, max_new_tokens: int, eos: torch.Tensor | None,
                 length_penalty: float = 1.0, early_stopping: bool | str = False, logits_processor=None,
                 do_sample: bool = False, generator: torch.Generator | None = None,
                 pad_token_id: int | None = None) -> None:
        rows, self.prompt_length = prompts.shape
        self.batch, self.num_beams = rows // num_beams, num_beams
        self.length, self.max_length = self.prompt_length, self.prompt_length + max_new_tokens
        self.eos, self.length_penalty, self.early_stopping = eos, length_penalty, early_stopping
        self.logits_processor, self.do_sample, self.generator = logits_processor, do_sample, generator
        device, shape = prompts.device, (self.batch, num_beams)
        # sequences are kept at full length, unwritten positions holding the fill (pad, else eos, else -1)
        fill = pad_token_id if pad_token_id is not None else int(eos[0]) if eos is not None else -1
        self.running_sequences = torch.full((*shape, self.max_length), fill, dtype=torch.long, device=device)
        self.running_sequences[:, :, :self.prompt_length] = prompts.reshape(*shape, self.prompt_length)
        self.finished_sequences = self.running_sequences.clone()
        # only the first beam of a prompt runs at first, so that the beams do not all pick the same tokens
        self.running_scores = torch.zeros(shape, device=device)
        self.running_scores[:, 1:] = _EXCLUDED
        self.finished_scores = torch.full(shape, _EXCLUDED, device=device)
        self.is_finished = torch.zeros(shape, dtype=torch.bool, device=device)
        self.may_improve = torch.ones(self.batch, 1, dtype=torch.bool, device=device)
        # the flat beam (batch x num_beams + beam) each new token continued: the cache's reordering
        self.running_origins = torch.full((*shape, max_new_tokens), -1, dtype=torch.int32, device=device)
        self.finished_origins = self.running_origins.clone()
        # enough candidates that num_beams of them go on even where the best ones all end
        self.candidates = max(2, 1 + (0 if eos is None else eos.numel())) * num_beams
        self.top_beams = torch.arange(self.candidates, device=device) < num_beams

    def step(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """Take the running beams' next-token ``logits`` [batch x num_beams, vocab]; return
        the tokens to feed next [batch x num_beams], the rows of the KV cache they continue
        (``cache.reorder_cache``), and whether the search is over."""
        scores, sequences, origins = self._candidates(logits)
        new = self.length - self.prompt_length
        # a candidate stops at the length, or with an eos token (transformers' stopping criteria)
        stops = torch.full(scores.shape, self.length + 1 >= self.max_length, dtype=torch.bool, device=scores.device)
        if self.eos is not None:
            stops |= torch.isin(sequences[:, :, self.length], self.eos)
        # the best num_beams candidates that go on run next
        going_on = scores + stops.to(torch.float32) * _EXCLUDED
        best = torch.topk(going_on, k=self.num_beams)[1]
        self.running_sequences, self.running_scores = _gather_beams(sequences, best), _gather_beams(going_on, best)
        self.running_origins = _gather_beams(origins, best)
        self._keep_finished(scores, sequences, origins, stops)
        self.length += 1
        self._update_may_improve()
        over = not (bool(self.may_improve.any())
                    and not (bool(self.is_finished.all()) and self.early_stopping is True)
                    and not bool(stops.all()))
        next_tokens = self.running_sequences[:, :, self.length - 1].reshape(-1)
        return next_tokens, self.running_origins[:, :, new].reshape(-1), over

    def _candidates(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The top (or, sampling, drawn) ``candidates`` continuations of all of a prompt's
        beams by summed log-probability, best first: their scores, sequences and origins,
        each [batch, candidates, ...]."""
        vocab = logits.shape[-1]
        log_probs = torch.nn.functional.log_softmax(logits.float(), dim=-1)
        if self.logits_processor is not None:
            log_probs = self.logits_processor(self.running_sequences[:, :, :self.length].reshape(-1, self.length),
                                              log_probs)
        log_probs = log_probs.reshape(self.batch, self.num_beams, vocab) + self.running_scores[:, :, None]
        log_probs = log_probs.reshape(self.batch, -1)
        if self.do_sample:  # drawn without replacement, then sorted as the top ones come
            flat = torch.multinomial(torch.softmax(log_probs, dim=-1), self.candidates, generator=self.generator)
            scores, order = log_probs.gather(1, flat).sort(dim=-1, descending=True)
            flat = flat.gather(1, order)
        else:
            scores, flat = torch.topk(log_probs, k=self.candidates)
        beam, token = flat // vocab, flat % vocab
        sequences = _gather_beams(self.running_sequences, beam)
        sequences[:, :, self.length] = token
        origins = _gather_beams(self.running_origins, beam)
        offsets = torch.arange(self.batch, device=logits.device).view(-1, 1) * self.num_beams
        origins[:, :, self.length - self.prompt_length] = (beam + offsets).to(origins.dtype)
        return scores, sequences, origins

    def _keep_finished(self, scores: torch.Tensor, sequences: torch.Tensor, origins: torch.Tensor,
                       stops: torch.Tensor) -> None:
        """Merge the candidates that just ended among the top num_beams into each prompt's
        best finished sequences."""
        just_finished = stops & self.top_beams[None, :]
        scores = scores / ((self.length + 1 - self.prompt_length) ** self.length_penalty)
        full = torch.all(self.is_finished, dim=-1, keepdim=True) & (self.early_stopping is True)
        scores = scores + full.to(torch.float32) * _EXCLUDED
        scores = scores + (~self.may_improve).to(torch.float32) * _EXCLUDED
        scores = scores + (~just_finished) * _EXCLUDED
        merged_scores = torch.cat((self.finished_scores, scores), dim=1)
        best = torch.topk(merged_scores, k=self.num_beams)[1]
        self.finished_sequences = _gather_beams(torch.cat((self.finished_sequences, sequences), dim=1), best)
        self.finished_scores = _gather_beams(merged_scores, best)
        self.finished_origins = _gather_beams(torch.cat((self.finished_origins, origins), dim=1), best)
        self.is_finished = _gather_beams(torch.cat((self.is_finished, just_finished), dim=1), best)

    def _update_may_improve(self) -> None:
        """Whether a running beam could still beat a prompt's worst finished sequence: with a
        positive length penalty and early_stopping "never", judged at the longest length it
        could reach; otherwise at the current one (transformers' heuristic)."""
        if self.early_stopping == "never" and self.length_penalty > 0.0:
            best_length = self.max_length - self.prompt_length
        else:
            best_length = self.length - self.prompt_length
        best_running = self.running_scores[:, :1] / (best_length ** self.length_penalty)
        worst_finished = torch.where(self.is_finished, torch.min(self.finished_scores, dim=1, keepdim=True)[0],
                                     _EXCLUDED)
        self.may_improve = self.may_improve & torch.any(best_running > worst_finished, dim=-1, keepdim=True)

    def result(self, num_return_sequences: int = 1) -> torch.Tensor:
        """The best ``num_return_sequences`` finished sequences of each prompt [batch x
        num_return_sequences, T + new], new the longest one's count of new tokens (shorter
        ones filled)."""
        sequences = self.finished_sequences[:, :num_return_sequences].reshape(-1, self.max_length)
        origins = self.finished_origins[:, :num_return_sequences].reshape(sequences.shape[0], -1)
        new = int((origins + 1).bool().sum(dim=1).max())
        return sequences[:, :self.prompt_length + new]
