"""Knowledge distillation: the losses against hand-computed values, the Distiller loop
(frozen teacher, accumulation, resume, mixed precision, logs) and the quantization-aware
distillation recipe (prepare -> distill -> convert with identical outputs)."""

import contextlib
import copy
import json
import math
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import effgen_kernels as ek
from effgen_kernels.distill import AttentionMapLoss, DistillationLoss, Distiller, HiddenStateLoss
from effgen_kernels.gpt import GPT, GPTConfig, lm_batch, stdlib_source_bytes


def hand_kd(student, teacher, labels, temperature, alpha, ignore_index=-100):
    """The KD loss written out position by position in float64."""
    total, count = 0.0, 0
    flat_s, flat_t = student.double().reshape(-1, student.shape[-1]), teacher.double().reshape(-1, teacher.shape[-1])
    for s, t, y in zip(flat_s, flat_t, labels.reshape(-1).tolist(), strict=True):
        if y == ignore_index:
            continue
        p_t = torch.exp(t / temperature) / torch.exp(t / temperature).sum()
        p_s = torch.exp(s / temperature) / torch.exp(s / temperature).sum()
        kl = float((p_t * (p_t.log() - p_s.log())).sum())
        ce = float(-torch.log(torch.exp(s[y]) / torch.exp(s).sum()))
        total += alpha * temperature**2 * kl + (1 - alpha) * ce
        count += 1
    return total / count


@pytest.mark.parametrize("temperature,alpha", [(1.0, 0.5), (2.0, 0.9), (4.0, 0.0), (0.5, 1.0)])
def test_distillation_loss_equals_the_hand_computed_value(temperature, alpha):
    torch.manual_seed(0)
    student, teacher = torch.randn(3, 7, 11) * 3, torch.randn(3, 7, 11) * 3
    labels = torch.randint(0, 11, (3, 7))
    labels[0, 5:] = -100  # padding
    labels[2, 0] = -100
    got = DistillationLoss(temperature, alpha)(student, teacher, labels)
    assert got.item() == pytest.approx(hand_kd(student, teacher, labels, temperature, alpha), rel=1e-5)


def test_distillation_loss_is_finite_for_huge_logits_and_bf16():
    student = torch.tensor([[1e4, -1e4, 0.0]], requires_grad=True)
    teacher = torch.tensor([[-1e4, 1e4, 0.0]])
    loss = DistillationLoss(2.0, 0.5)(student, teacher, torch.tensor([1]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(student.grad).all()
    bf16 = DistillationLoss(1.0, 1.0)(torch.randn(4, 9).bfloat16(), torch.randn(4, 9).bfloat16())
    assert bf16.dtype == torch.float32 and torch.isfinite(bf16)


def test_classes_the_teacher_rules_out_add_nothing():
    # A masked vocabulary (logit -inf) gave NaN: F.kl_div's exp(t) * (t - s) is 0 * -inf there.
    torch.manual_seed(0)
    student, teacher = torch.randn(2, 3, 7), torch.randn(2, 3, 7)
    teacher[..., 5:] = float("-inf")
    masked_student = student.clone()
    masked_student[0, 0, 6] = float("-inf")  # ruled out on both sides
    temperature = 2.0
    for logits in (student, masked_student):
        logits = logits.clone().requires_grad_()
        loss = DistillationLoss(temperature, 1.0)(logits, teacher)
        loss.backward()
        # by hand in float64: sum over the teacher's classes 0-4 of p_t (log p_t - log p_s),
        # p_s the student's softmax over all 7
        log_p_s = F.log_softmax(logits.detach().double() / temperature, -1)[..., :5]
        log_p_t = F.log_softmax(teacher[..., :5].double() / temperature, -1)
        expected = temperature**2 * (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1).mean()
        assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
        assert torch.isfinite(logits.grad).all()


def test_a_nan_in_the_teacher_gives_a_nan_loss_not_a_finite_one():
    student, teacher = torch.randn(2, 3, 7), torch.randn(2, 3, 7)
    teacher[1, 2, 4] = float("nan")
    assert torch.isnan(DistillationLoss(2.0, 1.0)(student, teacher))
    assert torch.isnan(DistillationLoss(2.0, 0.5)(student, teacher, torch.zeros(2, 3, dtype=torch.long)))


def test_positions_the_labels_ignore_may_hold_nan_or_inf():
    # Padding positions: a teacher whose logits there are all -inf (log-softmax NaN), a NaN
    # student and teacher hidden state. They must not count at all, as in the clean batch.
    student = torch.randn(2, 3, 7)
    labels = torch.tensor([[1, 2, -100], [3, -100, -100]])
    teacher = torch.randn(2, 3, 7)
    dirty_student, dirty_teacher = student.clone(), teacher.clone()
    dirty_teacher[0, 2] = float("-inf")
    dirty_teacher[1, 1, 3] = float("nan")
    dirty_student[1, 2] = float("nan")
    for alpha in (1.0, 0.5):
        clean = student.clone().requires_grad_()
        dirty = dirty_student.clone().requires_grad_()
        expected = DistillationLoss(2.0, alpha)(clean, teacher, labels)
        got = DistillationLoss(2.0, alpha)(dirty, dirty_teacher, labels)
        assert got.item() == pytest.approx(expected.item(), rel=1e-6)
        expected.backward()
        got.backward()
        kept = labels != -100
        assert torch.equal(dirty.grad[kept], clean.grad[kept]) and torch.all(dirty.grad[~kept] == 0)
    hidden = HiddenStateLoss({0: 0}, 4, 4)
    student_hidden, teacher_hidden = torch.randn(2, 3, 4, requires_grad=True), torch.randn(2, 3, 4)
    teacher_hidden[1, 2] = float("nan")
    hidden([student_hidden], [teacher_hidden], labels != -100).backward()
    assert torch.isfinite(student_hidden.grad).all()


def test_distillation_loss_is_zero_for_identical_logits_and_alpha_one():
    logits = torch.randn(2, 5, 13)
    assert DistillationLoss(3.0, 1.0)(logits, logits.clone()).item() == pytest.approx(0.0, abs=1e-6)


def test_fully_padded_batch_gives_zero_not_nan():
    student = torch.randn(2, 3, 5, requires_grad=True)
    loss = DistillationLoss()(student, torch.randn(2, 3, 5), torch.full((2, 3), -100))
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(student.grad, torch.zeros_like(student))


def test_distillation_loss_gradient_reaches_the_student_only():
    student = torch.randn(4, 6, requires_grad=True)
    teacher = torch.randn(4, 6, requires_grad=True)
    DistillationLoss(2.0, 0.5)(student, teacher, torch.tensor([0, 1, 2, 3])).backward()
    assert student.grad is not None and teacher.grad is None


def test_distillation_loss_bad_inputs_name_the_argument():
    loss = DistillationLoss(alpha=0.5)
    with pytest.raises(ValueError, match="same shape"):
        loss(torch.randn(2, 5), torch.randn(2, 6), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="labels are required"):
        loss(torch.randn(2, 5), torch.randn(2, 5))
    with pytest.raises(ValueError, match="labels must have shape"):
        loss(torch.randn(2, 5), torch.randn(2, 5), torch.zeros(3, dtype=torch.long))
    with pytest.raises(TypeError, match="labels must be int64"):
        loss(torch.randn(2, 5), torch.randn(2, 5), torch.zeros(2))
    with pytest.raises(TypeError, match="student_logits must be a float tensor, got torch.int64"):
        loss(torch.zeros(2, 5, dtype=torch.long), torch.randn(2, 5), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"teacher_logits are required when alpha > 0 \(alpha=0.5\)"):
        loss(torch.randn(2, 5), None, torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="temperature"):
        DistillationLoss(temperature=0)
    with pytest.raises(ValueError, match="alpha"):
        DistillationLoss(alpha=1.5)


def test_hidden_state_loss_projects_the_student_and_masks_positions():
    torch.manual_seed(0)
    loss = HiddenStateLoss({1: 2, 2: 4}, student_dim=6, teacher_dim=10)
    student = [torch.randn(2, 3, 6) for _ in range(3)]
    teacher = [torch.randn(2, 3, 10) for _ in range(5)]
    mask = torch.tensor([[True, True, False], [True, False, False]])
    expected = []
    for (s, t), proj in zip([(1, 2), (2, 4)], loss.projections, strict=True):
        diff = (proj(student[s]) - teacher[t]).pow(2).mean(-1)
        expected.append(diff[mask].mean())
    got = loss(student, teacher, mask)
    assert got.item() == pytest.approx(torch.stack(expected).mean().item(), rel=1e-6)
    got.backward()
    assert all(p.grad is not None for p in loss.parameters())
    with pytest.raises(IndexError, match="teacher layer 4"):
        loss(student, teacher[:3])
    with pytest.raises(ValueError, match="widths"):
        loss([torch.randn(2, 3, 7)] * 3, teacher)


def test_attention_map_loss_is_kl_per_query_row_and_averages_heads_when_counts_differ():
    torch.manual_seed(0)
    student = [torch.randn(2, 2, 4, 4).softmax(-1)]
    teacher = [torch.randn(2, 4, 4, 4).softmax(-1)]
    s, t = student[0].mean(1), teacher[0].mean(1)
    expected = (t * (t.log() - s.log())).sum(-1).mean()
    got = AttentionMapLoss([(0, 0)], eps=0.0)(student, teacher)
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    same = AttentionMapLoss([(0, 0)])(teacher, teacher)
    assert same.item() == pytest.approx(0.0, abs=1e-6)


def test_attention_map_loss_mask_selects_query_rows_and_ignores_what_they_drop():
    torch.manual_seed(0)
    student = torch.randn(2, 2, 4, 4).softmax(-1)
    teacher = torch.randn(2, 2, 4, 4).softmax(-1)
    mask = torch.tensor([[True, True, False, True], [False, True, False, False]])
    per_row = (teacher * (teacher.log() - student.log())).sum(-1).mean(1)  # [B, T]
    expected = per_row[mask].mean()
    dirty_student, dirty_teacher = student.clone().requires_grad_(), teacher.clone()
    with torch.no_grad():
        dirty_student[0, :, 2] = float("nan")  # a fully masked query row's softmax
    dirty_teacher[1, :, 3] = float("nan")
    loss = AttentionMapLoss([(0, 0)], eps=0.0)
    got = loss([dirty_student], [dirty_teacher], mask)
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    got.backward()
    assert torch.isfinite(dirty_student.grad).all()
    assert loss([student], [teacher], mask.long()).item() == pytest.approx(expected.item(), rel=1e-5)
    with pytest.raises(TypeError, match="mask must be boolean"):
        loss([student], [teacher], mask.float())
    with pytest.raises(ValueError, match=r"mask must have shape \(2, 4\)"):
        loss([student], [teacher], mask[:, :3])


@pytest.mark.parametrize("student_shape", [(2, 2, 4), (2, 2, 4, 3), (2, 2, 3, 3), (1, 2, 4, 4)])
def test_attention_map_loss_refuses_maps_of_other_batch_or_length(student_shape):
    student = torch.rand(student_shape)
    expected = (f"pair (0, 1): attention maps must be [B, H, T, T] with equal B and T, got student {student_shape} "
                "and teacher (2, 4, 4, 4)")
    with pytest.raises(ValueError, match=re.escape(expected)):
        AttentionMapLoss({0: 1})([student], [torch.rand(1, 1, 1, 1), torch.rand(2, 4, 4, 4)])


def small_lm(seed: int, **changes) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(context=32, dim=32, layers=2, heads=2).scaled(**changes))


@pytest.fixture(scope="module")
def text():
    return stdlib_source_bytes(max_bytes=200_000)[0]


def test_stdlib_source_bytes_splits_files_and_allows_an_empty_validation():
    train, validation = stdlib_source_bytes(max_bytes=200_000)
    assert train.dtype == validation.dtype == torch.uint8 and train.numel() >= 200_000 and validation.numel() > 0
    small_train, small_validation = stdlib_source_bytes(max_bytes=1)  # stops at the first file
    assert small_validation.numel() == 0 and torch.equal(small_train, train[:small_train.numel()])


def batches(text, batch_size=4, length=32):
    return lambda index: lm_batch(text, index, batch_size, length)


def test_distiller_trains_only_the_student_and_leaves_the_teacher_untouched(text):
    teacher, student = small_lm(0), small_lm(1, dim=16)
    before = copy.deepcopy(teacher.state_dict())
    teacher.train()  # the Distiller must put it in eval mode
    opt = torch.optim.AdamW(student.parameters(), lr=3e-3)
    distiller = Distiller(teacher, student, DistillationLoss(2.0, 0.5), opt, progress=False)
    # The loss on 64 windows it does not train on: one step's 4 windows swing by 10% (the
    # stdlib text differs by Python version)
    held_out = lm_batch(text, 10_000, batch_size=64, length=32)
    with torch.no_grad():
        untrained = distiller.compute_loss(held_out)["loss"].item()
    history = distiller.fit(batches(text), steps=30)
    assert not teacher.training and all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    for name, value in teacher.state_dict().items():
        assert torch.equal(value, before[name]), name
    with torch.no_grad():
        assert distiller.compute_loss(held_out)["loss"].item() < untrained * 0.8  # 0.74-0.76 on Python 3.11-3.12
    assert distiller.step == 30 and len(history) == 30


def test_gradient_accumulation_equals_one_large_batch(text):
    def run(accum):
        teacher, student = small_lm(0), small_lm(1, dim=16)
        opt = torch.optim.SGD(student.parameters(), lr=0.1)
        distiller = Distiller(teacher, student, DistillationLoss(2.0, 0.5), opt, grad_accum_steps=accum,
                              progress=False)
        inputs, labels = lm_batch(text, 0, 8, 32)
        parts = [(inputs[i::accum], labels[i::accum]) for i in range(accum)]
        distiller.train_step(parts)
        return [p.detach().clone() for p in student.parameters()]

    for a, b in zip(run(1), run(2), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_resume_from_a_checkpoint_continues_exactly(text, tmp_path):
    def make(with_hidden=True):
        teacher, student = small_lm(0), small_lm(1, dim=16)
        hidden = HiddenStateLoss({2: 2}, 16, 32) if with_hidden else None
        params = list(student.parameters()) + (list(hidden.parameters()) if hidden else [])
        opt = torch.optim.AdamW(params, lr=3e-3)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
        return Distiller(teacher, student, DistillationLoss(2.0, 0.5), opt, hidden_loss=hidden, scheduler=sched,
                         progress=False)

    straight = make()
    straight.fit(batches(text), steps=6)
    first = make()
    first.fit(batches(text), steps=3, checkpoint_path=tmp_path / "ckpt.pt", checkpoint_every=3)
    resumed = make()
    resumed.load(tmp_path / "ckpt.pt")
    assert resumed.step == 3
    resumed.fit(batches(text), steps=6)
    for a, b in zip(straight.student.parameters(), resumed.student.parameters(), strict=True):
        assert torch.equal(a, b)
    for a, b in zip(straight.hidden_loss.parameters(), resumed.hidden_loss.parameters(), strict=True):
        assert torch.equal(a, b)


def test_history_logs_each_step_s_learning_rate_and_evaluations_every_eval_every_steps(text):
    teacher, student = small_lm(0), small_lm(1, dim=16)
    opt = torch.optim.SGD(student.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    evaluated = []

    def evaluate(model):
        evaluated.append(model)
        return {"eval_step": distiller.step}

    distiller = Distiller(teacher, student, DistillationLoss(), opt, scheduler=sched, progress=False)
    history = distiller.fit(batches(text), steps=5, eval_fn=evaluate, eval_every=2)
    assert [h["lr"] for h in history] == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025])  # the rate each step used
    assert [h.get("eval_step") for h in history] == [None, 2, None, 4, None]
    assert all(model is student for model in evaluated)


def test_a_checkpoint_keeps_the_fp16_loss_scale(text, tmp_path):
    def make():
        teacher, student = small_lm(0), small_lm(1, dim=16)
        distiller = Distiller(teacher, student, DistillationLoss(), torch.optim.SGD(student.parameters(), lr=0.01),
                              autocast_dtype=torch.float16, progress=False)
        distiller.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=1)  # grows every step
        return distiller

    first = make()
    first.fit(batches(text), steps=3, checkpoint_path=tmp_path / "ckpt.pt", checkpoint_every=3)
    assert first.scaler.get_scale() > 2.0**10
    resumed = make()
    resumed.load(tmp_path / "ckpt.pt")
    assert resumed.scaler.get_scale() == first.scaler.get_scale()


def test_hidden_and_attention_matching_pull_the_student_towards_the_teacher(text):
    def final_distances(weight):
        teacher, student = small_lm(0), small_lm(1, dim=16, layers=1)
        hidden = HiddenStateLoss({1: 2}, 16, 32)
        opt = torch.optim.AdamW([*student.parameters(), *hidden.parameters()], lr=3e-3)
        distiller = Distiller(teacher, student, DistillationLoss(), opt, hidden_loss=hidden, hidden_weight=weight,
                              attention_loss=AttentionMapLoss({0: 1}), attention_weight=weight, progress=False)
        history = distiller.fit(batches(text), steps=15)
        return sum(h["hidden"] for h in history[-5:]), sum(h["attention"] for h in history[-5:])

    matched, unmatched = final_distances(10.0), final_distances(0.0)  # weight 0: measured, not optimized
    assert matched[0] < unmatched[0] / 2 and matched[1] < unmatched[1]


def test_a_projection_the_optimizer_does_not_update_is_an_error():
    teacher, student = small_lm(0), small_lm(1, dim=16, layers=1)
    with pytest.raises(ValueError, match="optimizer does not update"):
        Distiller(teacher, student, DistillationLoss(), torch.optim.SGD(student.parameters(), lr=0.1),
                  hidden_loss=HiddenStateLoss({1: 2}, 16, 32))


class LogitsOnly(nn.Module):
    """A model whose forward returns bare logits, whatever it is asked for."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids, **options):
        return self.model(ids).logits


class NoSyncRecorder(nn.Module):
    """A student with DDP's ``no_sync()``: records, per forward, whether it ran inside it."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.unsynced, self.calls = model, False, []

    @contextlib.contextmanager
    def no_sync(self):
        self.unsynced = True
        try:
            yield
        finally:
            self.unsynced = False

    def forward(self, ids, **options):
        self.calls.append(self.unsynced)
        return self.model(ids, **options)


def test_accumulation_skips_ddp_gradient_sync_on_every_micro_batch_but_the_last(text):
    student = NoSyncRecorder(small_lm(1, dim=16))
    distiller = Distiller(small_lm(0), student, DistillationLoss(), torch.optim.SGD(student.parameters(), lr=0.1),
                          grad_accum_steps=3, progress=False)
    distiller.train_step([batches(text)(i) for i in range(3)])
    assert student.calls == [True, True, False]


def test_distiller_checks_its_accumulation_and_the_outputs_the_losses_need(text):
    teacher, student = small_lm(0), small_lm(1, dim=16)
    opt = torch.optim.SGD(student.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="grad_accum_steps must be >= 1, got 0"):
        Distiller(teacher, student, DistillationLoss(), opt, grad_accum_steps=0)
    distiller = Distiller(teacher, student, DistillationLoss(), opt, grad_accum_steps=2, progress=False)
    with pytest.raises(ValueError, match=r"expected 2 micro-batches \(grad_accum_steps\), got 1"):
        distiller.train_step([batches(text)(0)])
    student = small_lm(1)
    logits_only = Distiller(LogitsOnly(teacher), student, DistillationLoss(),
                            torch.optim.SGD(student.parameters(), lr=0.1), progress=False,
                            hidden_loss=HiddenStateLoss({1: 2}, 32, 32))
    with pytest.raises(TypeError, match=r"the teacher's output has no .hidden_states; return it"):
        logits_only.train_step([batches(text)(0)])
    with pytest.raises(ValueError, match="layer_map must be a non-empty"):
        HiddenStateLoss({}, 32, 32)


def test_a_non_finite_loss_stops_the_run_before_the_optimizer_steps(text):
    teacher, student = small_lm(0), small_lm(1, dim=16)
    with torch.no_grad():
        student.lm_head.weight[0, 0] = float("nan")
    before = copy.deepcopy(student.state_dict())
    distiller = Distiller(teacher, student, DistillationLoss(), torch.optim.SGD(student.parameters(), lr=0.1),
                          progress=False)
    with pytest.raises(FloatingPointError, match="non-finite loss at step 0"):
        distiller.fit(batches(text), steps=3)
    for name, value in student.state_dict().items():
        torch.testing.assert_close(value, before[name], rtol=0, atol=0, equal_nan=True, msg=name)


def test_bf16_autocast_metrics_log_and_progress(text, tmp_path, capsys):
    teacher, student = small_lm(0), small_lm(1, dim=16)
    opt = torch.optim.AdamW(student.parameters(), lr=3e-3)
    log = tmp_path / "metrics.jsonl"
    distiller = Distiller(teacher, student, DistillationLoss(), opt, autocast_dtype=torch.bfloat16,
                          max_grad_norm=1.0, log_path=log)
    distiller.fit(batches(text), steps=4)
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2, 3, 4]
    assert all(math.isfinite(line["loss"]) and line["grad_norm"] > 0 for line in lines)
    err = capsys.readouterr().err
    assert "distill [" in err and "4/4" in err
    with pytest.raises(ValueError, match="autocast_dtype"):
        Distiller(teacher, student, DistillationLoss(), opt, autocast_dtype=torch.float64)


def test_an_int8_quantized_teacher_works(text):
    teacher, student = small_lm(0), small_lm(1, dim=16)
    ek.quantize_(teacher, ek.Int8Config())
    opt = torch.optim.AdamW(student.parameters(), lr=3e-3)
    history = Distiller(teacher, student, DistillationLoss(), opt, progress=False).fit(batches(text), steps=10)
    assert history[-1]["loss"] < history[0]["loss"]


@pytest.mark.parametrize("config", [ek.Int8Config(), ek.TernaryConfig(), ek.BinaryConfig()], ids=str)
def test_quantization_aware_distillation_then_convert_keeps_outputs(text, config):
    teacher = small_lm(0)
    student = copy.deepcopy(teacher)
    summary = ek.prepare(student, config, filter_fn=lambda module, name: name != "lm_head")
    assert len(summary.converted) == 2 * 6
    opt = torch.optim.AdamW(student.parameters(), lr=1e-3)
    history = Distiller(teacher, student, DistillationLoss(2.0, 0.5), opt, progress=False).fit(batches(text), 8)
    assert all(math.isfinite(h["loss"]) for h in history)
    inputs, _ = lm_batch(text, 999, 2, 32)
    student.eval()
    with torch.no_grad():
        before = student(inputs).logits
        converted = ek.convert(student)
        after = student(inputs).logits
    assert len(converted) == 12
    assert torch.equal(before, after)


def test_int8_train_linear_fake_quantizes_like_the_reference_and_passes_gradients_straight_through():
    torch.manual_seed(0)
    linear = nn.Linear(37, 19)
    module = ek.nn.Int8TrainLinear.from_float(linear)
    x = torch.randn(5, 37, requires_grad=True)
    y = module(x)
    xq, xs = ek.reference.quantize_per_token(x.detach())
    wq, ws = ek.reference.quantize_per_channel(linear.weight.detach(), axis=0)
    expected = F.linear(ek.reference.dequantize(xq, xs), ek.reference.dequantize(wq, ws, axis=0), linear.bias)
    torch.testing.assert_close(y, expected, rtol=1e-6, atol=1e-6)
    y.sum().backward()
    torch.testing.assert_close(x.grad, ek.reference.dequantize(wq, ws, axis=0).sum(0).expand(5, 37))
    torch.testing.assert_close(module.weight.grad, ek.reference.dequantize(xq, xs).sum(0).expand(19, 37))
    module.eval()
    with torch.no_grad():
        assert torch.equal(module(x), ek.nn.Int8Linear.from_float(linear)(x))
    with pytest.raises(ValueError, match="activation_absmax"):
        ek.prepare(nn.Sequential(nn.Linear(4, 4)), ek.Int8Config(activation_absmax={"0": torch.ones(4)}))


def test_without_a_teacher_it_is_plain_training_on_the_labels(text):
    torch.manual_seed(0)
    student = small_lm(1)
    opt = torch.optim.AdamW(student.parameters(), lr=3e-3)
    history = Distiller(None, student, DistillationLoss(alpha=0.0), opt, progress=False).fit(batches(text), 10)
    assert history[-1]["ce"] < history[0]["ce"] and all(h["kd"] == 0 for h in history)
    with pytest.raises(ValueError, match="teacher is None"):
        Distiller(None, student, DistillationLoss(alpha=0.5), opt)


def test_fp16_autocast_scales_the_loss(text):
    teacher, student = small_lm(0), small_lm(1, dim=16)
    opt = torch.optim.AdamW(student.parameters(), lr=3e-3)
    distiller = Distiller(teacher, student, DistillationLoss(), opt, autocast_dtype=torch.float16, progress=False)
    assert distiller.scaler.is_enabled()
    history = distiller.fit(batches(text), steps=6)
    assert all(math.isfinite(h["loss"]) for h in history) and history[-1]["loss"] < history[0]["loss"]
