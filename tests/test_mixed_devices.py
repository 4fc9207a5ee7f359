"""Every op's tensor arguments on one device. A meta tensor among CPU ones sends the call to
the op's fake (the dispatcher prefers Meta), not to the CPU kernel that checks devices; the
fake must refuse it, naming the argument, rather than return uninitialized CPU memory."""

import pytest
import torch
from op_calls import CALLS, K, M, N, fresh, op_of, tensor_arguments

import effgen_kernels as ek

CASES = [(call, i) for call in CALLS for i, _ in tensor_arguments(call)]


def test_every_op_taking_several_tensors_is_covered():
    several = {s.name.split("::")[1] for s in torch._C._jit_get_all_schemas() if s.name.startswith("effgen::") and
               sum("Tensor" in str(a.type) for a in s.arguments) > 1}
    assert several == {call.split("/")[0] for call in CALLS}


@pytest.mark.parametrize("call,index", CASES, ids=[f"{call}-{i}" for call, i in CASES])
def test_a_meta_argument_among_cpu_ones_is_refused_by_name(call, index):
    op, args = op_of(call), fresh(CALLS[call])
    op(*args)  # the call works with every tensor on the CPU
    args[index] = args[index].to("meta")
    named = tensor_arguments(call)
    public = call.split("/")[0].removesuffix("_cachemask")  # ops.fake_quantize_per_channel calls it
    if index == named[0][0]:  # the input itself on meta: any other tensor is the odd one out
        others = "|".join(name for _, name in named[1:])
        expected = f"{public}: ({others}) must be on meta like the input, got cpu"
    else:
        expected = f"{public}: {dict(named)[index]} must be on cpu like the input, got meta"
    with pytest.raises(RuntimeError, match=expected):
        op(*args)


def test_the_layers_refuse_a_meta_input():
    layer = ek.nn.Int8Linear.from_float(torch.nn.Linear(K, N))
    with pytest.raises(RuntimeError, match="must be on meta like the input, got cpu"):
        layer(torch.randn(M, K, device="meta"))
