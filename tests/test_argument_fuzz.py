"""Every op, one argument of a working call changed at a time (dtype, rank, shape, layout,
emptiness, NaN / Inf, odd integers): the op either runs or refuses with an error that names
it, and the CPU's instruction set never changes which of the two (a check that only some
kernels make, or an input only some read, shows up as a difference between ISAs). Run under
the sanitizers by `make sanitize`, so a mutation that reads or writes out of bounds fails."""

import re

import pytest
import torch
from conftest import CPU_ISAS
from op_calls import CALLS, GROUP, SINGLE_TENSOR_CALLS, fresh, op_of, ops

import effgen_kernels as ek

TENSOR_DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64, torch.int8, torch.uint8, torch.int32,
                 torch.int64, torch.bool]
INTS = [-1, 0, 1, 3, 7, 16, GROUP + 1, 2**31, -2**62]
FLOATS = [0.0, -1.0, float("nan"), float("inf"), 1e-45, 1e38]
OP_NAMES = {s.name.split("::")[1] for s in torch._C._jit_get_all_schemas() if s.name.startswith("effgen::")}
# Which op an error may name: its own (ops.py's public name, without "_cachemask"), or the
# step of it that refused (int8_dynamic_linear quantizes x with quantize_per_token); or
# torch's check of the schema's types, which names op and argument.
NAMED = re.compile(r"^(effgen::)?(?P<op>[a-z0-9_]+)(: |\(\) Expected a value of type)")
# torch's own words for a None where the schema wants a Tensor (the second where no tensor
# is left to dispatch on).
TORCH_NONE_TENSOR = ("tensor does not have a device", "There were no tensor arguments to this function")
EVERY_CALL = CALLS | SINGLE_TENSOR_CALLS


def tensor_mutations(t: torch.Tensor) -> dict[str, torch.Tensor | None]:
    out = {f"as {dtype}": t.to(dtype) for dtype in TENSOR_DTYPES if dtype != t.dtype}
    out["None"] = None
    out["0-d"] = t.reshape(-1)[:1].reshape(()) if t.numel() else torch.zeros((), dtype=t.dtype)
    out["flattened"] = t.reshape(-1)
    out["extra leading dim"] = t.unsqueeze(0)
    if t.dim():
        out["no rows"] = t[:0]
        out["one row more"] = torch.cat([t, t[:1]])
        out["one row fewer"] = t[:-1]
        out["last dim one shorter"] = t[..., :-1]
        out["last dim one longer"] = torch.cat([t, t[..., :1]], -1)
        out["every other element"] = torch.stack([t, t], -1)[..., 0]
    if t.dim() == 2:
        out["transposed"] = t.t()
    if t.is_floating_point():
        out["NaN"] = torch.full_like(t, float("nan"))
        out["Inf"] = torch.full_like(t, float("inf"))
        out["times 1e38"] = t * 1e38
        out["zeros"] = torch.zeros_like(t)
    return out


def mutations(value) -> dict[str, object]:
    if isinstance(value, torch.Tensor):
        return tensor_mutations(value)
    if isinstance(value, bool):
        return {f"{not value}": not value}
    if isinstance(value, int):
        return {str(i): i for i in INTS}
    if isinstance(value, float):
        return {str(f): f for f in FLOATS}
    if isinstance(value, torch.dtype):
        return {str(d): d for d in (torch.int8, torch.float64)}
    if value is None:
        return {"a tensor": torch.randn(5), "an int": 16}
    raise AssertionError(f"no mutations for {value!r}")


def outcome(call: str, args: list) -> str:
    """'ran', or the error's type and message."""
    try:
        op_of(call)(*fresh(args))
    except (ValueError, TypeError, RuntimeError, IndexError, NotImplementedError) as error:
        return f"{type(error).__name__}: {str(error).splitlines()[0]}"
    return "ran"


def assert_names_an_op(call: str, result: str) -> None:
    message = result.split(": ", 1)[1]
    if message.startswith(TORCH_NONE_TENSOR):
        return
    named = NAMED.match(message)
    assert named is not None and named["op"] in OP_NAMES | {"fake_quantize_per_channel", "fake_quantize_per_tensor"}, (
        f"{call}: an error that names no op: {result}")


def test_every_op_taking_tensors_is_covered():
    assert {op for op in OP_NAMES if any("Tensor" in str(a.type) for a in getattr(ops, op).default._schema.arguments)
            } == {call.split("/")[0] for call in EVERY_CALL}


@pytest.mark.parametrize("call", sorted(EVERY_CALL))
def test_each_changed_argument_runs_or_is_refused_by_name_alike_on_every_isa(call):
    for index, value in enumerate(EVERY_CALL[call]):
        for what, changed in mutations(value).items():
            args = list(EVERY_CALL[call])
            args[index] = changed
            results = {}
            for isa in CPU_ISAS:
                with ek.ops.use_cpu_isa(isa):
                    results[isa] = outcome(call, args)
            first = results[CPU_ISAS[0]]
            assert all(r == first for r in results.values()), (call, index, what, results)
            if first != "ran":
                assert_names_an_op(call, first)
