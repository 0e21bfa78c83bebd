"""The test suite checks itself: every test function asserts something, and no skip can fire in CI except for a
missing GPU.

Read with `ast`, not run: a test "asserts" when its body holds an `assert`, a `pytest.raises` / `pytest.warns` /
`pytest.fail` or a `raise AssertionError`, a call of an `assert...` function (numpy.testing's, a test's own helper), or a call of a helper that
itself asserts (any function of the test files or their helper modules, followed to a fixed point). A test that
asserts nothing passes whatever the code does (the anti-pattern "a comparison with no assert").

Skips: every `pytest.skip`, `pytest.importorskip` and skip mark in tests/ must be one that cannot fire in CI
(CI=true): listed in ALLOWED_SKIPS with the reason (the per-backend fixture's GPU skip, the shared data -- a failure
under CI --, the opt-in real checkpoint -- deselected under CI), an importorskip of a test-extra package (conftest
turns it into a plain import under CI), or a skipif mark on the platform (CI runs Linux). Anything else -- a skip
that hides a missing dependency or a missing case -- fails here, naming file and function.
"""
from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent

# (file relative to tests/, enclosing function): why it cannot fire in CI.
ALLOWED_SKIPS = {
    ("conftest.py", "backend_or_skip"): "only the cupy case skips when no GPU is usable (strict is a test dependency)",
    ("conftest.py", "require_shared"): "under CI=true a missing shared-data folder fails instead of skipping",
    ("conftest.py", "require_real_gguf"): "the realmodel tests are deselected under CI=true (conftest), never run",
    ("test_backends.py", "test_unavailable_backend_says_what_is_missing"): "fires only where a GPU is usable",
    ("test_bundled.py", "test_the_full_heldout_pass_gives_the_stated_loss"): "its skipif is false under CI=true "
                                                                              "(opt-in elsewhere: 10-60 s)",
}
# Skips that fire in CI and are tolerated for now (none today). Listed so that no NEW one can appear unnoticed:
# remove an entry when its owner turns the skip into a check (or a deselection); this test then keeps it out.
KNOWN_CI_SKIPS: dict = {}
# Test-extra packages (pyproject.toml): under CI=true conftest makes importorskip of them import or fail.
TEST_EXTRA_MODULES = {"torch", "transformers", "tokenizers", "tiktoken", "sentencepiece", "safetensors", "gguf",
                      "accelerate", "jinja2", "huggingface_hub", "array_api_strict", "hypothesis", "matplotlib", "peft"}
SKIP_CALLS = {"skip", "importorskip"}


def _test_files():
    return sorted(p for p in TESTS.rglob("*.py") if p.name != Path(__file__).name)


def _parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _functions(tree):
    return [node for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]


def _called_name(call: ast.Call) -> str | None:
    func = call.func
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return None


def _asserts_directly(function) -> bool:
    for node in ast.walk(function):
        if isinstance(node, ast.Assert):
            return True
        if isinstance(node, ast.Raise) and node.exc is not None and "AssertionError" in ast.unparse(node.exc):
            return True
        if isinstance(node, ast.Call):
            name = _called_name(node)
            if name is not None and (name.startswith("assert") or name in {"raises", "warns", "fail"}):
                return True
    return False


def _calls(function) -> set[str]:
    return {name for node in ast.walk(function) if isinstance(node, ast.Call) and (name := _called_name(node))}


def asserting_helpers(trees) -> set[str]:
    """Names of the functions (in any test file or helper module) that assert, directly or through another one."""
    functions = [f for tree in trees for f in _functions(tree)]
    asserting = {f.name for f in functions if _asserts_directly(f)}
    while True:
        more = {f.name for f in functions if f.name not in asserting and _calls(f) & asserting}
        if not more:
            return asserting
        asserting |= more


def find_tests_without_assertions() -> list[str]:
    trees = {path: _parse(path) for path in _test_files()}
    helpers = asserting_helpers(trees.values())
    missing = []
    for path, tree in trees.items():
        if not path.name.startswith("test_"):
            continue
        for node in tree.body:
            candidates = [node] if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) else \
                [n for n in node.body if isinstance(n, ast.FunctionDef)] if isinstance(node, ast.ClassDef) else []
            for function in candidates:
                if function.name.startswith("test") and not (_asserts_directly(function) or _calls(function) & helpers):
                    missing.append(f"{path.relative_to(TESTS)}::{function.name}")
    return missing


def _cannot_fire_in_ci(node) -> bool:
    """An importorskip of a test-extra package, or a skipif on the platform (os.name / sys.platform / signal)."""
    if isinstance(node, ast.Call) and _called_name(node) == "importorskip":
        module = node.args[0].value if node.args and isinstance(node.args[0], ast.Constant) else None
        return isinstance(module, str) and module.split(".")[0] in TEST_EXTRA_MODULES
    if isinstance(node, ast.Call) and _called_name(node) == "skipif" and node.args:
        condition = ast.unparse(node.args[0])
        return any(word in condition for word in ("os.name", "sys.platform", "signal"))
    return False


def skip_sites() -> set[tuple[str, str]]:
    """(file relative to tests/, enclosing function or "<module>") of every skip call or skip mark that may fire
    in CI (those that cannot -- see _cannot_fire_in_ci -- are left out)."""
    sites = set()
    for path in _test_files():
        tree = _parse(path)
        rel = str(path.relative_to(TESTS))
        owner = {}
        for function in _functions(tree):
            for node in ast.walk(function):
                owner.setdefault(id(node), function.name)
        for node in ast.walk(tree):
            is_skip = (isinstance(node, ast.Call) and _called_name(node) in SKIP_CALLS
                       and isinstance(node.func, ast.Attribute))
            is_mark = (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                       and node.func.attr in {"skip", "skipif"} and isinstance(node.func.value, ast.Attribute)
                       and node.func.value.attr == "mark")
            if (is_skip or is_mark) and not _cannot_fire_in_ci(node):
                sites.add((rel, owner.get(id(node), "<module>")))
    return sites


def test_every_test_asserts_something():
    assert find_tests_without_assertions() == []


def test_no_skip_that_can_fire_in_ci_except_for_a_gpu():
    unexplained = skip_sites() - set(ALLOWED_SKIPS) - set(KNOWN_CI_SKIPS)
    assert unexplained == set(), f"skips that may fire in CI: {sorted(unexplained)}"


def test_the_checker_finds_what_it_should():
    """The checks themselves can fail: an assertion-free test, a helper chain, a skip and a skip mark are seen."""
    source = ast.parse(
        "import pytest\n"
        "def helper(x):\n    assert x\n"
        "def indirect(x):\n    helper(x)\n"
        "def test_silent():\n    x = 1\n"
        "def test_through_helpers():\n    indirect(1)\n"
        "@pytest.mark.skipif(True, reason='r')\ndef test_marked():\n    assert True\n"
        "@pytest.mark.skipif(os.name == 'nt', reason='POSIX')\ndef test_posix():\n    assert True\n"
        "mod = pytest.importorskip('torch')\nother = pytest.importorskip('cupy')\n")
    helpers = asserting_helpers([source])
    assert {"helper", "indirect"} <= helpers and "test_silent" not in helpers
    silent = [f.name for f in source.body if isinstance(f, ast.FunctionDef) and f.name.startswith("test")
              and not (_asserts_directly(f) or _calls(f) & helpers)]
    assert silent == ["test_silent"]
    firing = [ast.unparse(n)[:40] for n in ast.walk(source) if isinstance(n, ast.Call)
              and _called_name(n) in {"skipif", "importorskip"} and not _cannot_fire_in_ci(n)]
    assert firing == ["pytest.mark.skipif(True, reason='r')", "pytest.importorskip('cupy')"]
    assert ALLOWED_SKIPS.keys().isdisjoint(KNOWN_CI_SKIPS)
