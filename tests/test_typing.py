"""The stubs (fastkv/_core.pyi, shipped with py.typed) type real code: mypy
--strict accepts tests/typing/usage.py and rejects misuses; the usage file
also runs against the installed tables; the generic classes are subscriptable
at run time, as their stubs claim."""

import os
import pathlib
import shutil
import subprocess
import sys
import textwrap

import pytest

import fastkv
import fastkv.reference

pytestmark = pytest.mark.once  # mypy over the stubs: CI runs it once

ROOT = pathlib.Path(__file__).resolve().parent.parent
TYPING = ROOT / "tests" / "typing"
PACKAGE = pathlib.Path(fastkv.__file__).resolve().parent  # the installed package
STUB = PACKAGE / "_core.pyi"


@pytest.fixture(scope="module")
def typed_copy(tmp_path_factory):
    """A copy of the installed package's Python sources and stubs in a fresh
    directory, so that mypy checks exactly what users install (mypy refuses to
    check files inside site-packages by path) and nothing from a checkout."""
    root = tmp_path_factory.mktemp("typed")
    dest = root / "fastkv"
    dest.mkdir()
    for path in PACKAGE.iterdir():
        if path.suffix in (".py", ".pyi") or path.name == "py.typed":
            shutil.copy(path, dest / path.name)
    return root


def run_mypy(cwd, *files):
    # cwd = the typed copy: mypy resolves ``fastkv`` there (the installed stubs
    # beside the installed sources); no cache, so every run checks the current files
    cmd = [
        sys.executable, "-m", "mypy",
        "--config-file", str(TYPING / "mypy.ini"),
        "--cache-dir", os.devnull,
        "--no-error-summary",
        "--show-error-codes",
        *map(str, files),
    ]
    env = dict(os.environ)
    env.pop("MYPYPATH", None)
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env, timeout=300)


def test_stub_is_shipped():
    assert STUB.is_file()
    assert (PACKAGE / "py.typed").is_file()


def test_mypy_strict_accepts_usage(typed_copy):
    result = run_mypy(typed_copy, TYPING / "usage.py", typed_copy / "fastkv" / "_core.pyi")
    assert result.returncode == 0, result.stdout + result.stderr


MISUSES = '''
from fastkv import Agent, FrozenTable, LockedTable, OwnerTable

frozen = FrozenTable({"a": 1})
locked = LockedTable({"a": 1})
owner = OwnerTable({"a": 1})
agent = Agent(1)

frozen["a"] + "x"  # E: int + str
frozen["b"] = 2  # E: FrozenTable is a Mapping: no item assignment
frozen.put(1, 2)  # E: key type
frozen.get_many("a", 0).append("x")  # E: list[int]
locked.update_counter("a", "x")  # E: incr is an int
locked.insert_new("a", "x")  # E: value type
locked.snapshot()["a"] = 1  # E: a snapshot is a FrozenTable
locked.select(lambda k: True)  # E: predicate(key, value)
locked.fetch("a", lambda k: "x")  # E: loader returns the value type
OwnerTable({}, access="public")  # E: access level
owner.call(lambda table: table, "extra")  # E: fn(table, *args) arity
owner.call(OwnerTable.get, "a")  # E: fn gets the LockedTable storage (each class types its own methods)
owner.info()["nope"]  # E: TypedDict key
agent.update(lambda s: str(s))  # E: the state type
agent.get_and_update(lambda s: s)  # E: must return (reply, new_state)
agent.get(lambda s, x: s + x, "y")  # E: argument type
frozen | [("b", 2)]  # E: | takes a mapping (pairs only through |= / put_many), as dict
locked |= 5  # E: |= takes a mapping or pairs
reversed(agent)  # E: an Agent is no mapping
'''


def test_mypy_rejects_misuses(tmp_path, typed_copy):
    source = textwrap.dedent(MISUSES).lstrip()
    path = tmp_path / "misuses.py"
    path.write_text(source)
    result = run_mypy(typed_copy, path)
    expected = {n for n, line in enumerate(source.splitlines(), 1) if "# E:" in line}
    reported = set()
    for line in result.stdout.splitlines():
        parts = line.split(":")
        if len(parts) > 2 and parts[0].endswith("misuses.py") and " error:" in line:
            reported.add(int(parts[1]))
    missed = {n: source.splitlines()[n - 1] for n in sorted(expected - reported)}
    assert not missed, f"mypy accepted: {missed}\n{result.stdout}{result.stderr}"
    assert reported <= expected, result.stdout


def test_usage_runs():
    import importlib.util

    spec = importlib.util.spec_from_file_location("fastkv_typing_usage", TYPING / "usage.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main()


@pytest.mark.parametrize("name", ["FrozenTable", "LockedTable", "OwnerTable", "Agent"])
def test_generic_at_runtime(impl, name):
    cls = getattr(impl, name)
    alias = cls[str, int] if name != "Agent" else cls[int]
    assert alias.__origin__ is cls
