"""The README's Python examples run as written (against the installed fastkv).

An example that opens ``redis://localhost:6379/0`` runs against the test
session's redis-server instead (the ``redis_server`` fixture: skipped, with a
notice in the summary, only where none can be started; a failure under CI)."""

import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
README_REDIS_URL = "redis://localhost:6379/0"


def test_readme_has_examples():
    assert len(BLOCKS) >= 6


@pytest.mark.parametrize("n", range(len(BLOCKS)))
def test_readme_example_runs(n, request):
    source = BLOCKS[n]
    if README_REDIS_URL in source:
        source = source.replace(README_REDIS_URL, request.getfixturevalue("redis_server").url)
    code = compile(source, f"README.md example {n}", "exec")
    exec(code, {"__name__": f"readme_example_{n}"})
