"""Which 1-bit gradient codec trains well: the two-phase error-feedback all-reduce of
effgen_kernels.distributed simulated in one process, with the codec swapped for variants.

Every rank's gradient is computed in this process (same data order as the DDP runs), each
parameter goes through worker compression with its residual, the average of the ranks'
decompressed values through the server's compression with its residual (phases 1-2 of the
hook; the chunking across ranks changes nothing, every codec works per block), and the
optimizer applies the result. The codecs here return decompress(compress(v)) in fp32, so
they measure what a format loses, not how fast it runs. RESULTS.md, sessions 35 and 36,
has the tables this produces ("ours" there was bare_sign until session 36, when the offset
form became the shipped codec).

    python benchmarks/sign_codec_study.py --task digits ours bare_sign plain
    python benchmarks/sign_codec_study.py --task gpt --steps 120 ours bare_sign plain
    python benchmarks/sign_codec_study.py --task gpt --steps 300 --feedback ef21 ours

--feedback ef21 swaps the hook's error feedback for EF21's running estimates (session 37);
--warmup-steps sets how many plain all-reduce steps come first, as CompressionState's
warmup_steps does (session 40).
"""

from __future__ import annotations

import argparse
import inspect
import time

import torch

from effgen_kernels.bench.ddp_worker import DEMO_GPT, DIGITS_LR, DigitsBatches, digits_data, digits_mlp
from effgen_kernels.distributed.compression import DEFAULT_BLOCK_SIZE, CompressionState
from effgen_kernels.reference import SIGN_SCALE_CAP

_DEFAULTS = inspect.signature(CompressionState).parameters  # the hook's defaults, simulated
WARMUP_STEPS, MIN_COMPRESS_NUMEL = _DEFAULTS["warmup_steps"].default, _DEFAULTS["min_compress_numel"].default


def _blocks(v: torch.Tensor, block: int) -> torch.Tensor:
    return torch.nn.functional.pad(v, (0, (-v.numel()) % block)).view(-1, block)


def _signs(b: torch.Tensor) -> torch.Tensor:
    return torch.where(b >= 0, 1.0, -1.0)


def bare_sign(b: torch.Tensor) -> torch.Tensor:
    """The sign codec until session 36: scale min(rms, 1.5 mean |v|), bit v >= 0."""
    scale = torch.minimum(b.square().mean(1, keepdim=True).sqrt(), SIGN_SCALE_CAP * b.abs().mean(1, keepdim=True))
    return _signs(b) * scale


def ours(b: torch.Tensor) -> torch.Tensor:
    """The sign codec as shipped: signs about the block's mean, mean + s * sign(v - mean), s
    as in bare_sign (two values a block). The mean is summed in double, as the kernels do, so
    that the bits (v >= mean) are theirs."""
    mean = b.double().mean(1, keepdim=True).float()
    return mean + bare_sign(b - mean)


def rms(b: torch.Tensor) -> torch.Tensor:
    return _signs(b) * b.square().mean(1, keepdim=True).sqrt()


def mean_abs(b: torch.Tensor) -> torch.Tensor:
    """EF-signSGD's scale."""
    return _signs(b) * b.abs().mean(1, keepdim=True)


def two_levels(b: torch.Tensor) -> torch.Tensor:
    """The mean of a block's non-negative values for bit 1, of its negative ones for bit 0."""
    plus = b >= 0
    high = torch.where(plus, b, 0).sum(1) / plus.sum(1).clamp(min=1)
    low = torch.where(plus, 0, b).sum(1) / (~plus).sum(1).clamp(min=1)
    return torch.where(plus, high[:, None], low[:, None])


def zero_kept(b: torch.Tensor) -> torch.Tensor:
    """bare_sign, but exact zeros decode to zero (an oracle: one bit cannot say so)."""
    return torch.sign(b) * bare_sign(b).abs()


def int8(b: torch.Tensor) -> torch.Tensor:
    scale = b.abs().amax(1, keepdim=True) / 127
    scale = torch.where(scale == 0, 1.0, scale)
    return (b / scale).round() * scale


CODECS = {"ours": ours, "bare_sign": bare_sign, "rms": rms, "mean_abs": mean_abs, "two_levels": two_levels,
          "zero_kept": zero_kept, "int8": int8, "plain": None}


def roundtrip(codec, v: torch.Tensor, block: int) -> torch.Tensor:
    return v if codec is None else codec(_blocks(v, block)).reshape(-1)[:v.numel()]


class DigitsTask:
    """netns_allreduce.py --train-steps' MLP and data (ddp_digits_worker), SGD with momentum."""

    def __init__(self, hidden: int, layers: int, world: int, lr_scale: float) -> None:
        self.images, self.labels = digits_data()
        self.model = digits_mlp(hidden, layers)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=DIGITS_LR * lr_scale, momentum=0.9)
        self.batches = [DigitsBatches(rank, world) for rank in range(world)]

    def loss(self, rank: int, step: int) -> torch.Tensor:
        batch = self.batches[rank](step)
        return torch.nn.functional.cross_entropy(self.model(self.images[batch]), self.labels[batch])


class GptTask:
    """`effgen demo` stage 2's GPT on the standard library's source, AdamW."""

    def __init__(self, world: int, lr_scale: float) -> None:
        from effgen_kernels.gpt import GPT, stdlib_source_bytes

        torch.manual_seed(0)
        self.model = GPT(DEMO_GPT)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=2e-3 * lr_scale)
        self.train = stdlib_source_bytes()[0]

    def loss(self, rank: int, step: int) -> torch.Tensor:
        from effgen_kernels.gpt import lm_batch

        inputs, labels = lm_batch(self.train, step, 8, DEMO_GPT.context, seed=rank)
        logits = self.model(inputs).logits
        return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))


class Feedback:
    """A simulated hook's state: per parameter, one buffer a worker and one the server's."""

    def __init__(self, params: list, world: int, codec, block: int, exact_server: bool) -> None:
        self.codec, self.block, self.exact_server = codec, block, exact_server
        self.workers = [[torch.zeros(p.numel()) for p in params] for _ in range(world)]
        self.server = [torch.zeros(p.numel()) for p in params]

    def exact(self, i: int, grads: list[torch.Tensor]) -> torch.Tensor:
        """Parameter ``i``'s exact average (warm-up, small parameters)."""
        return sum(grads) / len(grads)


class ClassicFeedback(Feedback):
    """The hook's error feedback: each worker sends C(g + e) and keeps the new e, the server
    sends C(mean + e_server) and keeps its e; the optimizer gets the decoded average."""

    def reduce(self, i: int, grads: list[torch.Tensor]) -> torch.Tensor:
        sent = []
        for rank, g in enumerate(grads):
            v = g + self.workers[rank][i]
            sent.append(roundtrip(self.codec, v, self.block))
            self.workers[rank][i] = v - sent[-1]
        v = sum(sent) / len(grads) + self.server[i]
        average = v if self.exact_server else roundtrip(self.codec, v, self.block)
        self.server[i] = v - average
        return average


class Ef21Feedback(Feedback):
    """EF21 (Richtarik et al., 2021) on both sides: worker r keeps an estimate h_r of its
    gradient and sends C(g_r - h_r), which it and the server add to h_r and to the server's
    H = mean h_r; the server sends C(H - G), which every rank adds to its copy of G, the
    gradient the optimizer gets. Same bits on the wire; G is a full-size buffer on every rank
    that classic feedback does not need."""

    def __init__(self, params: list, world: int, codec, block: int, exact_server: bool) -> None:
        super().__init__(params, world, codec, block, exact_server)
        self.shared = [torch.zeros(p.numel()) for p in params]

    def exact(self, i: int, grads: list[torch.Tensor]) -> torch.Tensor:
        """Warm-up: the estimates start at the exact gradients."""
        for rank, g in enumerate(grads):
            self.workers[rank][i] = g.clone()
        self.server[i] = super().exact(i, grads)
        self.shared[i] = self.server[i].clone()
        return self.server[i]

    def reduce(self, i: int, grads: list[torch.Tensor]) -> torch.Tensor:
        for rank, g in enumerate(grads):
            sent = roundtrip(self.codec, g - self.workers[rank][i], self.block)
            self.workers[rank][i] += sent
            self.server[i] += sent / len(grads)
        change = self.server[i] - self.shared[i]
        self.shared[i] += change if self.exact_server else roundtrip(self.codec, change, self.block)
        return self.shared[i]


FEEDBACKS = {"classic": ClassicFeedback, "ef21": Ef21Feedback}


def simulate(task, codec, steps: int, block: int, world: int = 2, exact_server: bool = False,
             min_compress_numel: int = MIN_COMPRESS_NUMEL, feedback: str = "classic",
             warmup_steps: int = WARMUP_STEPS) -> list[float]:
    """Trains ``task`` with the simulated hook; returns each step's loss (mean over ranks).
    Parameters with fewer than ``min_compress_numel`` values, and every parameter in the
    first ``warmup_steps`` steps, are averaged exactly."""
    params = list(task.model.parameters())
    reducer = FEEDBACKS[feedback](params, world, codec, block, exact_server)
    losses = []
    for step in range(steps):
        grads, step_loss = [], 0.0
        for rank in range(world):
            loss = task.loss(rank, step)
            grads.append(torch.autograd.grad(loss, params))
            step_loss += loss.item() / world
        losses.append(step_loss)
        for i, p in enumerate(params):
            per_rank = [g[i].reshape(-1) for g in grads]
            exact = codec is None or step < warmup_steps or p.numel() < min_compress_numel
            average = reducer.exact(i, per_rank) if exact else reducer.reduce(i, per_rank)
            p.grad = average.view_as(p).clone()
        task.optimizer.step()
    return losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("codecs", nargs="+", choices=CODECS)
    parser.add_argument("--task", choices=("digits", "gpt"), default="digits")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--block", type=int, default=DEFAULT_BLOCK_SIZE["sign"])
    parser.add_argument("--hidden", type=int, default=2500, help="digits: width of the hidden layers")
    parser.add_argument("--layers", type=int, default=4, help="digits: hidden layers")
    parser.add_argument("--lr-scale", type=float, default=1.0)
    parser.add_argument("--exact-server", action="store_true", help="phase 2 uncompressed")
    parser.add_argument("--min-compress-numel", type=int, default=MIN_COMPRESS_NUMEL,
                        help="smaller parameters go exact (digits: 3000 = the biases, 30000 = and the output layer)")
    parser.add_argument("--feedback", choices=FEEDBACKS, default="classic",
                        help="error feedback: the hook's (classic) or EF21's running estimates")
    parser.add_argument("--warmup-steps", type=int, default=WARMUP_STEPS,
                        help="plain all-reduce steps before compressing (CompressionState(warmup_steps=...))")
    args = parser.parse_args()
    for name in args.codecs:
        begin = time.perf_counter()
        task = (DigitsTask(args.hidden, args.layers, 2, args.lr_scale) if args.task == "digits"
                else GptTask(2, args.lr_scale))
        losses = simulate(task, CODECS[name], args.steps, args.block, exact_server=args.exact_server,
                          min_compress_numel=args.min_compress_numel, feedback=args.feedback,
                          warmup_steps=args.warmup_steps)
        last = losses[-20:]
        print(f"{name:<11} final loss (mean of the last {len(last)} steps) {sum(last) / len(last):.4f}  "
              f"({time.perf_counter() - begin:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
