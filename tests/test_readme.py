"""The README's tour runs as written: each ```python block is a program,
run in order in one folder (a block starting with ``# file: NAME`` is
written to that file instead, for the blocks after it to use)."""

import os
import re
import subprocess
import sys

import pytest

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")
BLOCK = re.compile(r"```python\n(.*?)```", re.S)


def _tour_blocks():
    if not os.path.exists(README):
        return []
    with open(README) as f:
        text = f.read()
    tour = text[text.index("## Tour"):text.index("## How the pool works")]
    return BLOCK.findall(tour)


@pytest.mark.skipif(not _tour_blocks(), reason="README.md not next to the tests")
def test_every_tour_example_runs(tmp_path):
    ran = 0
    for number, code in enumerate(_tour_blocks()):
        first = code.splitlines()[0]
        if first.startswith("# file: "):
            (tmp_path / first[len("# file: "):].strip()).write_text(code)
            continue
        script = tmp_path / f"example_{number}.py"
        script.write_text(code)
        out = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 0, f"README example {number} failed:\n{code}\n{out.stderr}"
        ran += 1
    assert ran >= 6
