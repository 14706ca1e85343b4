"""The public API is fully annotated: an example that uses all of it
(tests/typing/public_api_example.py) passes ``mypy --strict``, checked
against the installed swarm (py.typed, inline annotations, .pyi stubs)."""

import os
import subprocess
import sys

import pytest

import swarm

EXAMPLE = os.path.join(os.path.dirname(__file__), "typing", "public_api_example.py")


def test_public_api_example_passes_mypy_strict(tmp_path):
    pytest.importorskip("mypy.api")
    env = dict(os.environ)
    package_parent = os.path.dirname(os.path.dirname(swarm.__file__))
    if "site-packages" not in package_parent:
        # An editable install: mypy does not follow its import hooks.
        env["MYPYPATH"] = package_parent
    out = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent",
         "--cache-dir", str(tmp_path / "cache"), EXAMPLE],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
