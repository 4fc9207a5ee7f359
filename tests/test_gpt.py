"""The example GPT model and the byte-level corpus helpers."""

import math

import pytest
import torch
import torch.nn.functional as F

from effgen_kernels.gpt import GPT, GPTConfig, evaluate_perplexity, lm_batch, stdlib_source_bytes


def tiny() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(context=16, dim=24, layers=2, heads=3))


def test_explicit_attention_matches_the_fused_path_and_maps_are_causal_distributions():
    model = tiny().eval()
    ids = torch.randint(0, 256, (2, 11))
    fused = model(ids)
    explicit = model(ids, output_hidden_states=True, output_attentions=True)
    torch.testing.assert_close(fused.logits, explicit.logits, rtol=1e-5, atol=1e-5)
    assert len(explicit.hidden_states) == 3 and len(explicit.attentions) == 2
    for weights in explicit.attentions:
        assert weights.shape == (2, 3, 11, 11)
        torch.testing.assert_close(weights.sum(-1), torch.ones(2, 3, 11))
        assert torch.equal(weights.triu(1), torch.zeros_like(weights))  # nothing attends to the future


def test_outputs_do_not_depend_on_future_tokens():
    model = tiny().eval()
    ids = torch.randint(0, 256, (1, 12))
    changed = ids.clone()
    changed[0, 8:] = (changed[0, 8:] + 1) % 256
    torch.testing.assert_close(model(ids).logits[:, :8], model(changed).logits[:, :8])


def test_bad_inputs_name_the_problem():
    model = tiny()
    with pytest.raises(ValueError, match="exceeds the model's context"):
        model(torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(ValueError, match="input_ids"):
        model(torch.zeros(17))
    with pytest.raises(ValueError, match="multiple of heads"):
        GPTConfig(dim=10, heads=3)


def test_corpus_splits_are_disjoint_and_batches_reproducible():
    train, validation = stdlib_source_bytes(max_bytes=300_000)
    assert train.numel() >= 300_000 and validation.numel() > 2000
    assert bytes(validation[:2000].tolist()) not in bytes(train.tolist())
    a, b = lm_batch(train, 7, 4, 32), lm_batch(train, 7, 4, 32)
    assert torch.equal(a[0], b[0]) and torch.equal(a[0][:, 1:], a[1][:, :-1])
    assert not torch.equal(a[0], lm_batch(train, 8, 4, 32)[0])
    with pytest.raises(ValueError, match=r"stream of 9 tokens is too short for windows of 8 \+ 1"):
        lm_batch(train[:9], 0, 4, 8)


def test_perplexity_of_a_uniform_model_is_the_vocabulary_size():
    model = tiny()
    with torch.no_grad():
        model.lm_head.weight.zero_()
    stream = torch.randint(0, 256, (500,), dtype=torch.uint8)
    assert evaluate_perplexity(model, stream, 16) == pytest.approx(256.0, rel=1e-5)
    assert model.training  # restored
    with pytest.raises(ValueError, match="at least 2 tokens"):
        evaluate_perplexity(model, stream[:1], 16)
    assert math.isfinite(evaluate_perplexity(tiny(), stream, 16, max_windows=3))


@pytest.mark.parametrize("argument", [{"length": 0}, {"length": -4}, {"batch_size": 0}, {"max_windows": 0}])
def test_perplexity_refuses_window_counts_below_one(argument):
    stream = torch.randint(0, 256, (100,), dtype=torch.uint8)
    name, value = next(iter(argument.items()))
    with pytest.raises(ValueError, match=f"{name} must be at least 1, got {value}"):
        evaluate_perplexity(tiny(), stream, **{"length": 16, **argument})


def test_perplexity_restores_training_mode_when_the_model_raises():
    model = tiny()
    stream = torch.randint(0, 1000, (100,))  # ids past the 256-token vocabulary: the embedding raises
    with pytest.raises(IndexError):
        evaluate_perplexity(model, stream, 16)
    assert model.training


@pytest.mark.parametrize("n, windows", [(20, [(0, 17), (16, 20)]), (32, [(0, 17), (16, 32)]),
                                        (33, [(0, 17), (16, 33)])])
def test_perplexity_counts_every_prediction_including_a_short_last_window(n, windows):
    # Windows of 16 predictions (17 tokens, each starting at the last one's final token);
    # the last may be shorter, one token short of a whole window included (n = 32).
    model = tiny().eval()
    stream = torch.randint(0, 256, (n,), dtype=torch.uint8)
    nll = 0.0
    for start, end in windows:
        window = stream[start:end]
        with torch.no_grad():
            logits = model(window[:-1].long().unsqueeze(0)).logits[0]
        nll += F.cross_entropy(logits, window[1:].long(), reduction="sum").item()
    expected = math.exp(nll / (n - 1))
    for batch_size in (1, 8):
        assert evaluate_perplexity(model, stream, 16, batch_size=batch_size) == pytest.approx(expected, rel=1e-5)
    assert not model.training  # it came in eval mode and stays there


def test_lm_batch_draws_every_window_of_the_stream():
    stream = torch.arange(20, dtype=torch.uint8)  # windows of 16 + 1 tokens start at 0, 1, 2 or 3
    firsts = {int(inputs[0, 0]) for inputs, _ in (lm_batch(stream, index, 1, 16) for index in range(200))}
    assert firsts == {0, 1, 2, 3}
    inputs, labels = lm_batch(stream, 0, 8, 16)
    assert torch.equal(labels[:, :-1], inputs[:, 1:]) and int(labels.max()) <= 19
