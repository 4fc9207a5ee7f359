"""The README's code against the package: its self-contained example runs, every name it
uses from effgen_kernels exists, its calls of our functions and classes pass arguments they
accept, its command-line synopsis names options the `effgen` parser has, the environment
variables it names are read by the code and the files it points at exist. A rename that
leaves the README behind fails here."""

import ast
import inspect
import re
from pathlib import Path

import pytest
import torch

import effgen_kernels as ek
from effgen_kernels import cli

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()

# Where the README's code finds names: `ek`, and what it imports from these modules.
NAMESPACES = {"ek": ek, "effgen_kernels": ek, "effgen_kernels.distributed": ek.distributed,
              "effgen_kernels.distill": ek.distill, "effgen_kernels.nn": ek.nn}
try:  # the transformers integration, where transformers is installed
    import effgen_kernels.hf

    NAMESPACES["effgen_kernels.hf"] = effgen_kernels.hf
except ImportError:
    pass


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README, flags=re.S)


def parseable(block: str) -> str:
    """The block with its elisions made Python: a line `...train...` stands for code the
    reader writes, a leading `...` for code before a statement."""
    lines = []
    for line in block.splitlines():
        if re.fullmatch(r"\s*\.\.\.\w+\.\.\.\s*", line):
            line = "pass"
        lines.append(re.sub(r"^(\s*)\.\.\.(?=\w)", r"\1", line))
    return "\n".join(lines)


def imported_names(tree: ast.AST) -> dict[str, object]:
    names = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module in NAMESPACES:
            module = NAMESPACES[node.module]
            for alias in node.names:
                assert hasattr(module, alias.name), f"README imports {alias.name} from {node.module}, which lacks it"
                names[alias.asname or alias.name] = getattr(module, alias.name)
    return names


def resolve(expr: ast.expr, names: dict[str, object]):
    """The object an expression like `ek.nn.Int8Linear.from_float` or `CompressionState` names
    in the package, or None where it names something else (torch, a local variable)."""
    if isinstance(expr, ast.Name):
        if expr.id == "ek":
            return ek
        return names.get(expr.id)
    if isinstance(expr, ast.Attribute):
        owner = resolve(expr.value, names)
        if owner is None:
            return None
        assert hasattr(owner, expr.attr), f"README uses {ast.unparse(expr)}, which does not exist"
        return getattr(owner, expr.attr)
    return None


def calls_of_ours(tree: ast.AST, names: dict[str, object]):
    """(source, callable, call node) for each call of a function or class of the package."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            target = resolve(node.func, names)
            if target is not None and callable(target):
                yield ast.unparse(node), target, node
        elif isinstance(node, ast.Attribute):
            resolve(node, names)  # an attribute that is not called must exist too


def check_arguments(source: str, target, call: ast.Call) -> None:
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):  # a builtin or an op without a Python signature
        return
    if any(isinstance(arg, ast.Starred) for arg in call.args) or any(kw.arg is None for kw in call.keywords):
        return
    try:
        signature.bind(*[None] * len(call.args), **{kw.arg: None for kw in call.keywords})
    except TypeError as error:
        # a missing required argument is the README eliding it; an unknown one is drift
        if "missing" not in str(error):
            raise AssertionError(f"README's {source}: {error}") from None


def ours(obj) -> bool:
    name = obj.__name__ if inspect.ismodule(obj) else getattr(obj, "__module__", None) or ""
    return name.split(".")[0] == "effgen_kernels"


def all_calls() -> list[tuple[str, object, ast.Call]]:
    calls = []
    for block in python_blocks():
        tree = ast.parse(parseable(block))
        calls.extend(calls_of_ours(tree, imported_names(tree)))
    # calls the prose and comments show, such as `CompressionState(codec="sign", min_compress_numel=30000)`
    everything = {name: obj for module in NAMESPACES.values() for name, obj in vars(module).items()
                  if not name.startswith("_") and ours(obj)}
    for snippet in re.findall(r"\b(?:ek\.)?[\w.]*[A-Za-z_]\w*\([^()`\n]*\)", README):
        try:
            tree = ast.parse(snippet, mode="eval")
        except SyntaxError:
            continue
        func = tree.body.func if isinstance(tree.body, ast.Call) else None
        root = func
        while isinstance(root, ast.Attribute):
            root = root.value
        if isinstance(root, ast.Name) and (root.id == "ek" or root.id in everything):
            calls.extend(calls_of_ours(tree, everything))
    return calls


def test_readme_has_code_to_check():
    assert len(python_blocks()) >= 5
    sources = [source for source, _, _ in all_calls()]
    for expected in ("ek.quantize_(", "CompressionState(codec='sign', min_compress_numel=30000)",
                     "Distiller(", "ek.ops.fake_quantize_per_channel(",
                     *(["EffgenConfig("] if "effgen_kernels.hf" in NAMESPACES else [])):
        assert any(expected in source for source in sources), expected


def test_readme_calls_pass_arguments_our_functions_accept():
    for source, target, call in all_calls():
        check_arguments(source, target, call)


def test_argument_check_catches_a_renamed_keyword():
    tree = ast.parse("ek.Int8WeightOnlyConfig(group_sizes=128)")
    (source, target, call), = calls_of_ours(tree, {})
    with pytest.raises(AssertionError, match="group_sizes"):
        check_arguments(source, target, call)
    with pytest.raises(AssertionError, match="ek.nn.Int8Linearr"):
        list(calls_of_ours(ast.parse("ek.nn.Int8Linearr.from_float(m)"), {}))


def test_readme_first_example_runs():
    first = python_blocks()[0]
    assert first.startswith("import torch\nimport effgen_kernels as ek\n")
    scope = {}
    exec(compile(first, "README.md", "exec"), scope)
    assert scope["q"].dtype == torch.int8 and scope["q"].shape == (8, 4096)
    assert scope["g_scale"].shape == (8, 32)


def synopsis(command: str) -> str:
    block = re.search(r"## Command line\n\n```\n(.*?)```", README, flags=re.S).group(1)
    text = re.sub(r"\n\s+\[", " [", block)  # join continuation lines
    return re.search(rf"^effgen {command}\b.*$", text, flags=re.M).group(0)


def subparser(command: str):
    actions = [a for a in cli.parser()._actions if hasattr(a, "choices") and isinstance(a.choices, dict)]
    return actions[0].choices[command]


@pytest.mark.parametrize("command", ["info", "demo", "bench"])
def test_readme_command_line_synopsis_matches_the_parser(command):
    options = {opt: action for action in subparser(command)._actions for opt in action.option_strings}
    for option, values in re.findall(r"\[(--[\w-]+)\s*([^\]]*)\]", synopsis(command)):
        assert option in options, f"README: effgen {command} {option} is not an option"
        choices = options[option].choices
        if choices:
            for value in re.split(r"[|\s]+", values.strip()):
                assert value in choices, f"README: effgen {command} {option} {value} is not a choice"
    if command == "bench":
        families = re.search(r"--only ([^\]]*)\]", synopsis(command)).group(1).split()
        assert sorted(families) == sorted(cli.discover_benchmarks())


CODE = [ROOT / "setup.py", ROOT / "Makefile", *(path for folder in ("csrc", "effgen_kernels", "benchmarks", "scripts")
                                                for path in (ROOT / folder).rglob("*")
                                                if path.suffix in {".py", ".sh", ".cpp", ".h", ".cu", ".cuh"})]


def test_readme_environment_variables_are_read_by_the_code():
    code = "\n".join(path.read_text(errors="replace") for path in CODE)
    for variable in sorted(set(re.findall(r"\bEFFGEN_[A-Z0-9_]+", README))):
        assert re.search(rf"\b{variable}\b", code), f"README names {variable}, which nothing reads"


def test_readme_paths_exist():
    paths = set(re.findall(r"\b(?:benchmarks|scripts|examples|tests|csrc|effgen_kernels)/[\w./-]*\w", README))
    assert "scripts/gpu_check.sh" in paths
    for path in sorted(paths):
        assert (ROOT / path).exists(), f"README points at {path}, which does not exist"
