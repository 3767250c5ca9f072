"""The README's Python examples run as written (against the installed fastkv)."""

import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)


def test_readme_has_examples():
    assert len(BLOCKS) >= 6


@pytest.mark.parametrize("n", range(len(BLOCKS)))
def test_readme_example_runs(n):
    code = compile(BLOCKS[n], f"README.md example {n}", "exec")
    exec(code, {"__name__": f"readme_example_{n}"})
