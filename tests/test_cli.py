"""The `effgen` command, the build report, the ISA override, and the benchmark harness."""

import collections
import functools
import importlib.util
import json
import os
import platform
import subprocess
import sys

import pytest
import torch

import effgen_kernels as ek
import effgen_kernels.bench
from effgen_kernels import cli
from effgen_kernels.bench import BenchResult, harness, memory_bandwidth_gbps, time_interleaved, with_env
from effgen_kernels.bench.ddp_worker import default_allocator
from effgen_kernels.bench.harness import RETAINING_MALLOC_ENV


def run_python(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env})


def test_info_reports_build_and_isa(capsys):
    assert cli.main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["torch"] == torch.__version__
    assert info["cpu_isa"] in info["cpu_isas_available"]
    assert info["cpu_isas_available"][0] == "scalar"
    assert info["build"]["cuda"] == ek.ops.built_with_cuda()
    assert cli.main(["info"]) == 0
    assert "CPU ISA in use" in capsys.readouterr().out


def test_info_says_when_the_isa_is_forced(monkeypatch, capsys):
    monkeypatch.setenv("EFFGEN_CPU_ISA", ek.ops.cpu_isa())  # the ISA in use: forcing it changes nothing else
    assert cli.main(["info"]) == 0
    assert f"{ek.ops.cpu_isa()} (EFFGEN_CPU_ISA)" in capsys.readouterr().out
    monkeypatch.delenv("EFFGEN_CPU_ISA")
    assert cli.main(["info"]) == 0
    assert "(EFFGEN_CPU_ISA)" not in capsys.readouterr().out


@pytest.mark.parametrize("isa", ek.ops.supported_cpu_isas())
def test_env_override_picks_the_isa(isa):
    done = run_python("import effgen_kernels as ek; print(ek.ops.cpu_isa())", EFFGEN_CPU_ISA=isa)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == isa


def test_env_override_rejects_unknown_and_unsupported():
    done = run_python("import torch, effgen_kernels as ek; ek.ops.quantize_per_token(torch.ones(2, 2))",
                      EFFGEN_CPU_ISA="sse9")
    assert done.returncode != 0 and "unknown CPU ISA 'sse9'" in done.stderr
    if "amx" not in ek.ops.supported_cpu_isas():
        done = run_python("import effgen_kernels as ek; ek.ops.cpu_isa()", EFFGEN_CPU_ISA="amx")
        assert done.returncode != 0 and "EFFGEN_CPU_ISA=amx but this CPU supports at most" in done.stderr


def test_bench_rejects_unknown_family(capsys):
    assert cli.main(["bench", "--allocator", "system", "--only", "nonexistent"]) == 2
    assert "unknown benchmark" in capsys.readouterr().err


@pytest.mark.parametrize("option", ["--json", "--plot"])
def test_bench_refuses_an_output_it_cannot_write_before_it_runs(tmp_path, capsys, option):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    assert cli.main(["bench", "--allocator", "system", "--only", "quant", option, str(blocker / "dir" / "out")]) == 2
    err = capsys.readouterr().err
    assert f"effgen bench: cannot write to {option} ({blocker / 'dir'}): Not a directory" in err
    assert "measuring" not in err  # refused before the run, not after it


def test_bench_environment_holds_ours_and_every_peer_library_to_the_isa():
    env = cli.bench_environment("system", "avx2")
    assert env == cli.CPU_ISA_CAPS["avx2"] and env["EFFGEN_CPU_ISA"] == "avx2"
    assert cli.bench_environment("system", None) == {}
    if platform.system() == "Linux":
        assert cli.bench_environment("retain", "avx2") == {**RETAINING_MALLOC_ENV, **env}


@pytest.mark.skipif("avx2" not in ek.ops.supported_cpu_isas(), reason="no AVX2 on this CPU")
def test_bench_isa_cap_reaches_our_kernels_and_aten():
    code = "import torch, effgen_kernels as ek; print(ek.ops.cpu_isa(), torch.backends.cpu.get_cpu_capability())"
    done = run_python(code, **cli.CPU_ISA_CAPS["avx2"])
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-2:] == ["avx2", "AVX2"]


def test_bench_rejects_an_isa_this_cpu_lacks(monkeypatch, capsys):
    monkeypatch.setattr(ek.ops, "supported_cpu_isas", lambda: ["scalar"])
    assert cli.main(["bench", "--cpu-isa", "avx2", "--only", "quant"]) == 2
    assert "--cpu-isa avx2: this CPU supports ['scalar']" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_bench_on_cuda_without_a_gpu_is_refused_with_a_message(capsys):
    assert cli.main(["bench", "--allocator", "system", "--device", "cuda", "--only", "quant"]) == 2
    err = capsys.readouterr().err
    assert "effgen bench: --device cuda needs a visible GPU and the CUDA kernels built" in err
    assert "measuring" not in err


@pytest.mark.distributed  # the allreduce and parallel families time their steps in gloo workers
def test_every_benchmark_family_runs_and_reports_through_effgen_bench(tmp_path, monkeypatch):
    """`effgen bench --quick --json` with every timed loop calling each function once (fake
    times: 1 ms) and no weights rotated; the ops, the peers and the workers are real. A
    benchmark that breaks fails here, not in the next session's bench run."""
    calls = collections.Counter()

    def call_each_once(fns, reps, warmup=2, device="cpu", graph_calls=1, prime=False):
        for name, fn in fns.items():
            fn()
            calls[name] += 1
        return dict.fromkeys(fns, 1e-3)

    monkeypatch.setattr(harness, "time_interleaved", call_each_once)
    monkeypatch.setattr(effgen_kernels.bench, "time_interleaved", call_each_once)
    monkeypatch.setattr(effgen_kernels.bench, "Rotation", functools.partial(harness.Rotation, total_bytes=0))
    out, plot = tmp_path / "bench.json", tmp_path / "bench.png"
    assert cli.main(["bench", "--quick", "--allocator", "system", "--json", str(out), "--plot", str(plot)]) == 0
    report = json.loads(out.read_text())
    assert report["quick"] and report["device"] == "cpu" and report["memory_gbps"]["limit"] > 0
    assert report["machine"]["cpu_isa"] == ek.ops.cpu_isa()
    rows = report["results"]
    assert {row["family"] for row in rows} == set(cli.discover_benchmarks())
    for row in rows:
        assert row["ours_ms"] > 0 and row["peer_ms"] > 0 and row["bytes_moved"] > 0, row
    assert calls["ours"] > 0 and calls["copy"] == calls["read"] == 1  # our ops, and the bandwidth probe once
    assert plot.exists() == (importlib.util.find_spec("matplotlib") is not None)


def test_bench_discovers_the_quant_benchmark():
    assert "quant" in cli.discover_benchmarks()


def test_time_interleaved_measures_each_function():
    calls = {"a": 0, "b": 0}

    def bump(name):
        def fn():
            calls[name] += 1
            sum(range(2000 if name == "a" else 200000))
        return fn

    medians = time_interleaved({"a": bump("a"), "b": bump("b")}, reps=7, warmup=1)
    assert calls == {"a": 8, "b": 8}
    assert 0 < medians["a"] < medians["b"]


def test_time_interleaved_varies_what_runs_before_each_function():
    # A call's time depends on the call before it (caches evicted, cores idle), so no
    # function may keep one predecessor: a rotated order kept it in 3 of 4 calls here.
    sequence = []
    names = "abcd"
    time_interleaved({name: (lambda name=name: sequence.append(name)) for name in names}, reps=40, warmup=0)
    assert sorted(sequence) == sorted(names * 40)
    for name in names:
        before = collections.Counter(sequence[i - 1] for i in range(1, len(sequence)) if sequence[i] == name)
        assert max(before.values()) <= 0.6 * sum(before.values()), (name, before)


def test_time_interleaved_primes_each_timed_call_with_one_of_its_own():
    # prime=True: every timed call right after an untimed call of the same function, rounds
    # still shuffled; the medians count only the timed calls (the priming ones, the odd
    # calls here, are the slowest of all: timing them, or both, would bring the medians close).
    sequence = []
    timed_length = {"fast": 0, "slow": 100000}
    def fn(name):
        def call():
            sequence.append(name)
            sum(range(400000 if len(sequence) % 2 else timed_length[name]))
        return call
    medians = time_interleaved({name: fn(name) for name in timed_length}, reps=30, warmup=0, prime=True)
    assert len(sequence) == 2 * 2 * 30
    assert all(sequence[i] == sequence[i + 1] for i in range(0, len(sequence), 2))
    assert sequence[::2] != ["fast", "slow"] * 30 and sequence[::2] != ["slow", "fast"] * 30
    assert 5 * medians["fast"] < medians["slow"]


def test_time_interleaved_ignores_graph_calls_on_the_cpu():
    calls = []
    time_interleaved({"a": lambda: calls.append(1)}, reps=3, warmup=1, graph_calls=5)
    assert len(calls) == 4


@pytest.mark.cuda
def test_time_interleaved_replays_graphs_of_calls_on_a_gpu():
    """graph_calls=4: the warm-up runs eagerly, the capture runs nothing, each of the 3
    samples replays 4 calls; a graph that reads its weights captures the rotation too."""
    counter = torch.zeros((), device="cuda")
    copies = [torch.full((), float(i), device="cuda") for i in range(4)]
    step = iter(range(10**6))
    seen = torch.zeros((), device="cuda")
    def fn():
        counter.add_(1)
        seen.add_(copies[next(step) % 4])
    medians = time_interleaved({"bump": fn}, reps=3, warmup=1, device="cuda", graph_calls=4)
    assert counter.item() == 1 + 3 * 4
    assert seen.item() == 0 + 3 * (1 + 2 + 3 + 0)  # warm-up used copy 0, the capture copies 1, 2, 3, 0
    assert medians["bump"] > 0


def test_with_env_sets_the_variable_for_the_call_only(monkeypatch):
    monkeypatch.delenv("EFFGEN_TEST_CHOICE", raising=False)
    seen = []
    call = with_env("EFFGEN_TEST_CHOICE", "shared", lambda: seen.append(os.environ.get("EFFGEN_TEST_CHOICE")))
    call()
    assert seen == ["shared"] and "EFFGEN_TEST_CHOICE" not in os.environ
    monkeypatch.setenv("EFFGEN_TEST_CHOICE", "global")
    with pytest.raises(ZeroDivisionError):
        with_env("EFFGEN_TEST_CHOICE", "shared", lambda: 1 / 0)()
    assert os.environ["EFFGEN_TEST_CHOICE"] == "global"  # restored after an error too


def test_with_env_peers_are_timed_without_setting_the_variable(monkeypatch):
    # The harness sets an EnvCall's variable around the timed call and times fn alone, so the
    # os.environ writes (and, on a GPU, the idle time they cause) stay outside the sample.
    monkeypatch.delenv("EFFGEN_TEST_CHOICE", raising=False)

    def inner():
        return None

    timed = []

    def fake_time_call(fn, device):
        timed.append((fn, os.environ.get("EFFGEN_TEST_CHOICE")))
        fn()
        return 1.0

    monkeypatch.setattr(harness, "_time_call", fake_time_call)
    forced = with_env("EFFGEN_TEST_CHOICE", "global", inner)
    medians = time_interleaved({"forced": forced}, reps=3, warmup=1)
    assert medians == {"forced": 1.0}
    assert timed == [(inner, "global")] * 3 and "EFFGEN_TEST_CHOICE" not in os.environ


def test_distributed_workers_start_with_the_default_allocator(monkeypatch):
    # `effgen bench` runs with RETAINING_MALLOC_ENV; the workers it spawns must not inherit it
    # (it tripled the int8 hook's DDP step), while a user's own settings pass through.
    mmap_max, trim = RETAINING_MALLOC_ENV
    monkeypatch.setenv(mmap_max, RETAINING_MALLOC_ENV[mmap_max])
    monkeypatch.setenv(trim, "12345")
    with default_allocator():
        assert mmap_max not in os.environ and os.environ[trim] == "12345"
    assert os.environ[mmap_max] == RETAINING_MALLOC_ENV[mmap_max] and os.environ[trim] == "12345"


def test_memory_bandwidth_limit_is_the_faster_of_copy_and_read():
    rates = memory_bandwidth_gbps("cpu", nbytes=8 << 20, reps=3)
    assert rates["copy"] > 0 and rates["read"] > 0
    assert rates["limit"] == max(rates["copy"], rates["read"])


def test_bench_result_ratios():
    r = BenchResult("quant", "op", "1x1", "float32", ours_ms=2.0, peer="p", peer_ms=6.0, bytes_moved=10**9,
                    limit_gbps=1000.0)
    assert r.speedup == 3.0
    assert r.achieved_gbps == pytest.approx(500.0)
    assert r.fraction_of_limit == pytest.approx(0.5)
    assert r.as_dict()["speedup"] == 3.0


def test_bench_result_fraction_is_of_the_closer_limit():
    # 1e12 arithmetic operations in 2 ms: 500 TOP/s of a 1000 TOP/s peak, and 10 MB at 5 GB/s
    # of 1000 GB/s: compute binds.
    r = BenchResult("gemm", "op", "1x1", "int8", ours_ms=2.0, peer="p", peer_ms=2.0, bytes_moved=10**7,
                    limit_gbps=1000.0, ops=10**12, peak_gops=10**6)
    assert r.achieved_gops == pytest.approx(5e5)
    assert r.fraction_of_limit == pytest.approx(0.5)
    assert BenchResult("gemm", "op", "1x1", "int8", 2.0, "p", 2.0, 10**9, 1000.0, ops=10**12).fraction_of_limit == \
        pytest.approx(0.5)  # no peak measured: the memory limit


def test_memory_bandwidth_counts_a_copy_as_read_and_write(monkeypatch):
    timed = {}

    def fake_time_interleaved(fns, reps, warmup, device):
        timed.update(fns=sorted(fns), reps=reps)
        return {"copy": 1.0, "read": 0.25}

    monkeypatch.setattr(harness, "time_interleaved", fake_time_interleaved)
    rates = memory_bandwidth_gbps("cpu", nbytes=1 << 20, reps=5)
    assert timed == {"fns": ["copy", "read"], "reps": 5}
    assert rates == {"copy": 2 * (1 << 20) / 1e9, "read": 4 * (1 << 20) / 1e9, "limit": 4 * (1 << 20) / 1e9}


def test_rotation_holds_enough_deep_copies_to_exceed_the_bytes_and_cycles_through_them():
    made = []

    def make():
        made.append(torch.zeros(4))
        return made[-1]

    rotation = harness.Rotation(make, bytes_per_copy=300, total_bytes=1000)
    assert len(made) == 1 and len(rotation) == 4  # 4 x 300 > 1000 > 3 x 300
    assert len({item.data_ptr() for item in rotation.items}) == 4
    visits = [rotation.next() for _ in range(8)]
    assert [item.data_ptr() for item in visits] == [item.data_ptr() for item in rotation.items[1:] +
                                                    rotation.items[:1]] * 2
    assert len(harness.Rotation(make, bytes_per_copy=300, total_bytes=1000, rotate=False)) == 1


def test_measure_peers_times_ours_and_every_peer_in_one_primed_loop(monkeypatch):
    loops = []

    def fake_time_interleaved(fns, reps, warmup, device, graph_calls, prime):
        loops.append((sorted(fns), reps, warmup, graph_calls, prime))
        return {"ours": 0.002, "a": 0.004, "b": 0.001}

    monkeypatch.setattr(harness, "time_interleaved", fake_time_interleaved)
    messages = []
    ctx = harness.BenchContext(torch.device("cpu"), quick=True, limit_gbps=100.0, progress=messages.append)
    results = ctx.measure_peers("quant", "op", "[8]", torch.bfloat16, lambda: None,
                                {"a": lambda: None, "b": lambda: None}, bytes_moved=10**6)
    assert loops == [(["a", "b", "ours"], 5, 2, 1, True)]
    assert [(r.peer, r.ours_ms, r.peer_ms, r.dtype) for r in results] == [("a", 2.0, 4.0, "bfloat16"),
                                                                          ("b", 2.0, 1.0, "bfloat16")]
    assert len(messages) == 2 and "x  2.00" in messages[0] and "x  0.50" in messages[1]
    assert harness.BenchContext(torch.device("cpu"), quick=False, limit_gbps=1.0).reps == 21


@pytest.mark.parametrize("bias", [True, False])
def test_fbgemm_peer_takes_layers_with_and_without_bias(bias):
    from effgen_kernels.bench.peers import fbgemm_dynamic_linear

    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 24, bias=bias)
    x = torch.randn(5, 64)
    peer = fbgemm_dynamic_linear(linear)
    torch.testing.assert_close(peer(x), linear(x), atol=0.05, rtol=0.05)  # 8-bit activations and weights


def test_bench_plot_draws_one_bar_per_result(tmp_path):
    pytest.importorskip("matplotlib")
    results = [BenchResult("quant", "op a", "[4]", "float32", 1.0, "peer", 3.0, 16, 10.0),
               BenchResult("quant", "op b", "[4]", "float32", 2.0, "peer", 1.0, 16, 10.0)]
    cli.plot_speedups(results, tmp_path / "plots" / "bench.png")
    assert (tmp_path / "plots" / "bench.png").read_bytes().startswith(b"\x89PNG")


def test_progress_bar_draws_first_and_last_and_throttles_the_rest(capsys):
    from effgen_kernels.progress import Progress

    bar = Progress(10, "work", every_s=3600)
    for _ in range(10):
        bar.update(detail="busy")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2  # the first update and the last; the rest fall inside every_s
    assert lines[-1].startswith("work [########################] 10/10") and lines[-1].endswith("| busy")
    Progress(5, "quiet", enabled=False).update(5)
    assert capsys.readouterr().err == ""
    Progress(5, "short", silent_s=3600).update(5)  # over before the silence ends: nothing, not even the end
    assert capsys.readouterr().err == ""


def test_progress_bar_redraws_in_place_on_a_terminal_with_an_eta(monkeypatch):
    import io

    from effgen_kernels import progress

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    clock = {"now": 100.0}
    monkeypatch.setattr(progress.time, "monotonic", lambda: clock["now"])
    monkeypatch.setattr(progress.sys, "stderr", Terminal())
    bar = progress.Progress(4, "job")
    clock["now"] = 110.0
    bar.update()  # 1 of 4 after 10 s: 30 s to go at that rate
    clock["now"] = 110.1
    bar.update(detail="skipped")  # within the terminal's 0.2 s
    clock["now"] = 140.0
    bar.update(4, detail="done")
    assert progress.sys.stderr.getvalue() == ("\rjob [######..................] 1/4 10s, eta 30s\x1b[K"
                                             "\rjob [########################] 4/4 40s, eta 0s | done\x1b[K\n")


def test_cuda_int8_gemm_report_follows_device_build_and_override(monkeypatch):
    build = {"cuda": True, "cuda_archs": ["80", "90a"]}
    monkeypatch.delenv("EFFGEN_CUDA_INT8_GEMM", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cli.cuda_int8_gemm(build) is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (9, 0))
    assert cli.cuda_int8_gemm(build) == "wgmma where it fills the GPU, cublas, else mma"
    assert cli.cuda_int8_kernels(build) == ["mma", "wgmma"]
    assert cli.cuda_int8_gemm({"cuda": True, "cuda_archs": ["80", "90"]}) == "cublas, else mma"  # no sm_90a code
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (8, 0))
    assert cli.cuda_int8_gemm(build) == "cublas, else mma"
    assert cli.cuda_int8_kernels(build) == ["mma"]
    monkeypatch.setenv("EFFGEN_CUDA_INT8_GEMM", "wgmma")
    assert cli.cuda_int8_gemm(build) == "wgmma"
    assert cli.cuda_int8_gemm({"cuda": False}) is None
