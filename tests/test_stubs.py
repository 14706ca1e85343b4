"""The .pyi stubs of swarm._core match the compiled modules.

For each compiled module (frame, shm, sock, taskqueue, reorder) this checks that:

- every name its stub declares (top-level functions, classes, constants,
  and each class's methods and properties) exists on the built module,
  properties as data descriptors and functions as callables;
- every public name of the built module, and every public member of its
  classes, is declared in the stub (Cython's own additions and names
  imported from elsewhere excepted);
- the stub's parameter names and kinds match the compiled functions'
  signatures;
- a snippet that uses every module both runs and, where mypy is installed,
  passes ``mypy --strict`` against the stubs.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import os
import subprocess
import sys
import textwrap
import types

import pytest

import swarm

MODULES = ["frame", "shm", "sock", "taskqueue", "reorder", "runner"]

# Module attributes that Cython adds to every compiled module.
CYTHON_MODULE_NAMES = {"__test__", "__pyx_capi__", "__reduce_cython__",
                       "__setstate_cython__", "__pyx_unpickle_Enum"}
# Class attributes that Cython adds to every cdef class (its tp_new, its
# pickling refusal, its vtable) or that every class has.
CYTHON_CLASS_NAMES = {"__new__", "__doc__", "__pyx_vtable__", "__reduce__",
                      "__setstate__", "__reduce_cython__", "__setstate_cython__",
                      "__module__", "__dict__", "__weakref__"}


def _load(name: str) -> tuple[types.ModuleType, ast.Module]:
    module = importlib.import_module(f"swarm._core.{name}")
    # The .so is named e.g. sock.cpython-311-x86_64-linux-gnu.so, so the stub
    # path is built from the bare module name, not from splitext(__file__).
    path = os.path.join(os.path.dirname(module.__file__), name + ".pyi")
    assert os.path.exists(path), f"no stub next to {module.__file__}"
    with open(path, encoding="utf-8") as f:
        return module, ast.parse(f.read(), filename=path)


def _is_property(node: ast.FunctionDef) -> bool:
    return any(isinstance(d, ast.Name) and d.id == "property"
               for d in node.decorator_list)


def _stub_names(tree: ast.Module) -> tuple[dict[str, ast.AST], dict[str, dict[str, ast.AST]]]:
    """Top-level declarations, and each class's member declarations."""
    top: dict[str, ast.AST] = {}
    classes: dict[str, dict[str, ast.AST]] = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            top[node.name] = node
        elif isinstance(node, ast.ClassDef):
            top[node.name] = node
            members: dict[str, ast.AST] = {}
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    members[item.name] = item
                elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    members[item.target.id] = item
                elif isinstance(item, ast.Assign):
                    for target in item.targets:
                        if isinstance(target, ast.Name):
                            members[target.id] = item
            classes[node.name] = members
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            top[node.target.id] = node
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    top[target.id] = node
        # Imports are typing helpers for the stub itself, not module surface.
    return top, classes


def _defined_elsewhere(module: types.ModuleType, obj: object) -> bool:
    """An imported module, or a class/function re-exported from another module."""
    if isinstance(obj, types.ModuleType):
        return True
    if isinstance(obj, type) or callable(obj):
        return getattr(obj, "__module__", module.__name__) != module.__name__
    return False


@pytest.mark.parametrize("name", MODULES)
def test_every_stub_name_exists_on_the_module(name):
    module, tree = _load(name)
    top, classes = _stub_names(tree)
    assert top, f"{name}.pyi declares nothing"
    missing = [n for n in top if not hasattr(module, n)]
    for cls_name, members in classes.items():
        cls = getattr(module, cls_name, None)
        assert isinstance(cls, type), f"{name}.{cls_name} is not a class"
        for member, node in members.items():
            if not hasattr(cls, member):
                missing.append(f"{cls_name}.{member}")
                continue
            runtime = inspect.getattr_static(cls, member)
            if isinstance(node, ast.FunctionDef) and _is_property(node):
                assert inspect.isdatadescriptor(runtime), \
                    f"{name}.{cls_name}.{member} is a property in the stub, not in the module"
            elif isinstance(node, ast.FunctionDef):
                assert callable(getattr(cls, member)), \
                    f"{name}.{cls_name}.{member} is a method in the stub, not callable in the module"
    for fn_name, node in top.items():
        if isinstance(node, ast.FunctionDef):
            assert callable(getattr(module, fn_name, None)), \
                f"{name}.{fn_name} is a function in the stub, not callable in the module"
    assert not missing, f"{name}.pyi declares names the module lacks: {missing}"


@pytest.mark.parametrize("name", MODULES)
def test_every_public_name_is_in_the_stub(name):
    module, tree = _load(name)
    top, classes = _stub_names(tree)
    undeclared = []
    for attr in dir(module):
        if attr.startswith("_") or attr in CYTHON_MODULE_NAMES:
            continue
        if _defined_elsewhere(module, getattr(module, attr)):
            continue  # e.g. os, pickle, swarm.errors.ProtocolError
        if attr not in top:
            undeclared.append(attr)
    for attr, obj in vars(module).items():
        if not isinstance(obj, type) or _defined_elsewhere(module, obj):
            continue
        declared = classes.get(attr, {})
        for member in vars(obj):
            if member in CYTHON_CLASS_NAMES:
                continue
            if member.startswith("_") and not (member.startswith("__") and member.endswith("__")):
                continue  # private
            if member not in declared:
                undeclared.append(f"{attr}.{member}")
    assert not undeclared, f"{name}.pyi lacks public names: {undeclared}"


def _stub_params(node: ast.FunctionDef) -> list[tuple[str, str, bool]]:
    """(name, kind, has default) for each parameter, as inspect names kinds."""
    args = node.args
    positional = args.posonlyargs + args.args
    defaults = [False] * (len(positional) - len(args.defaults)) + [True] * len(args.defaults)
    params = []
    for i, arg in enumerate(positional):
        kind = "POSITIONAL_ONLY" if i < len(args.posonlyargs) else "POSITIONAL_OR_KEYWORD"
        params.append((arg.arg, kind, defaults[i]))
    if args.vararg:
        params.append((args.vararg.arg, "VAR_POSITIONAL", False))
    for arg, default in zip(args.kwonlyargs, args.kw_defaults):
        params.append((arg.arg, "KEYWORD_ONLY", default is not None))
    if args.kwarg:
        params.append((args.kwarg.arg, "VAR_KEYWORD", False))
    return params


def _runtime_params(obj: object) -> list[tuple[str, str, bool]] | None:
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return None  # a C slot (__len__) or Cython's tp_new: nothing to compare
    return [(p.name, p.kind.name, p.default is not inspect.Parameter.empty)
            for p in sig.parameters.values()]


@pytest.mark.parametrize("name", MODULES)
def test_stub_signatures_match_the_compiled_functions(name):
    module, tree = _load(name)
    top, classes = _stub_names(tree)
    pairs = [(fn_name, node, getattr(module, fn_name)) for fn_name, node in top.items()
             if isinstance(node, ast.FunctionDef)]
    for cls_name, members in classes.items():
        cls = getattr(module, cls_name)
        pairs += [(f"{cls_name}.{member}", node, inspect.getattr_static(cls, member))
                  for member, node in members.items()
                  if isinstance(node, ast.FunctionDef) and not _is_property(node)
                  and not (member.startswith("__") and member.endswith("__"))]
    compared = 0
    for qualname, node, runtime in pairs:
        expected = _runtime_params(runtime)
        if expected is None:
            continue
        assert _stub_params(node) == expected, f"{name}.{qualname}: stub and module disagree"
        compared += 1
    assert compared or not pairs, f"no signature of {name} could be compared"


# Uses every stubbed module; run for real below, and type-checked by mypy.
SNIPPET = textwrap.dedent('''
    import pickle
    import socket
    from typing import Any, List, Optional, Sequence, Tuple, Union

    from swarm._core import frame
    from swarm._core.reorder import ReorderBuffer
    from swarm._core.shm import KEEP_FDS_MAX, SharedBuffer, kept_fds
    from swarm._core.sock import DEFAULT_MAX_FRAME, SHM_THRESHOLD, Channel
    from swarm._core.taskqueue import TaskQueue

    queue = TaskQueue()
    queue.push(0, 0, "a")
    queue.extend(1, 0, ["b", "c"])
    queue.push_front(1, 5, "d")
    size: int = len(queue)
    assert size == 4 and queue.count(1) == 3 and queue.first_requestor() == 1
    popped: Tuple[int, int, Any] = queue.pop(1)
    assert popped == (1, 5, "d")
    dropped: List[Tuple[int, Any]] = queue.remove_requestor(1)
    assert dropped == [(0, "b"), (1, "c")] and queue.pop(7) == (0, 0, "a")

    reorder = ReorderBuffer(expected=2)
    reorder.expect(3)
    reorder.put(1, "y")
    reorder.put(0, "x")
    ready: List[Any] = reorder.pop_ready()
    state: Tuple[int, int, int, bool] = (
        reorder.next_index, reorder.expected, reorder.held, reorder.done)
    assert ready == ["x", "y"] and state == (2, 3, 0, False)

    header: bytes = frame.pack_header(frame.KIND_TASK, 1, 0, 0, [8])
    assert len(header) == frame.HEADER_SIZE + 8
    fields: Tuple[int, int, int, int, int] = frame.unpack_header(
        memoryview(header)[:frame.HEADER_SIZE], max_frame=frame.DEFAULT_MAX_FRAME)
    assert fields == (frame.KIND_TASK, 1, 0, 0, 1)
    assert frame.kind_name(fields[0]) == "task"
    assert (frame.MAGIC, frame.VERSION, frame.MAX_BUFFERS) > (0, 0, 0)
    assert frame.KIND_INIT < frame.KIND_RESULT < frame.KIND_ERROR

    shm_header: bytes = frame.pack_header(frame.KIND_TASK, 1, 0, 0, [8 | frame.FD_BUFFER],
                                          offsets=[0])
    assert len(shm_header) == frame.HEADER_SIZE + 16 and frame.FLAG_FDS == 1
    assert frame.MAX_FDS == 253

    shared = SharedBuffer(64)
    view = memoryview(shared)  # type: ignore[arg-type]
    view[:2] = b"ok"
    counts: Tuple[int, int, int, int] = (shared.size, shared.file_offset, shared.exports,
                                         kept_fds())
    assert counts[:3] == (64, 0, 1) and 1 <= counts[3] <= KEEP_FDS_MAX + 1
    import os
    again: SharedBuffer = SharedBuffer.from_fd(os.dup(shared.fd), 0, -1)
    assert again.size == 64 and again.fd >= 0
    view.release()
    del shared, again

    left, right = socket.socketpair()
    writer = Channel(left.detach(), blocking=True, max_frame=DEFAULT_MAX_FRAME,
                     shm_threshold=SHM_THRESHOLD)
    reader = Channel(right.detach())
    try:
        writer.push(frame.KIND_TASK, 7, 0, {"x": 1})
        assert writer.pending and writer.max_frame == DEFAULT_MAX_FRAME
        assert writer.shm_threshold == SHM_THRESHOLD and reader.queued_fds == 0
        flushed: bool = writer.flush()
        sent: bool = writer.send(frame.KIND_RESULT, 8, 0, [1, 2])
        assert flushed and sent and writer.fileno() >= 0
        got: Optional[Tuple[int, int, int, bytes,
                            Sequence[Union[bytearray, SharedBuffer]]]] = reader.read_frame()
        assert got is not None
        kind, task_id, aux, body, buffers = got
        assert (kind, task_id, aux) == (frame.KIND_TASK, 7, 0)
        assert pickle.loads(body, buffers=buffers) == {"x": 1}
        assert reader.buffered > 0
    finally:
        writer.close()
        reader.close()
    assert writer.closed and reader.closed
''')


def test_snippet_runs_against_the_built_modules():
    # The snippet's asserts keep it honest: what mypy checks is what runs.
    exec(compile(SNIPPET, "<stub snippet>", "exec"), {"__name__": "stub_snippet"})


def test_snippet_passes_mypy_strict(tmp_path):
    pytest.importorskip("mypy.api")
    root = os.path.dirname(os.path.dirname(os.path.abspath(swarm.__file__)))
    # Errors in swarm's pure-Python modules are not this test's business:
    # follow those imports silently, but report everything in the stubs.
    config = ["[mypy]", "follow_imports = silent",
              "[mypy-swarm._core.*]", "follow_imports = normal"]
    # An editable install hides the package behind an import hook mypy does
    # not follow: point mypy at the source tree. An installed package is
    # found in site-packages (mypy refuses site-packages in mypy_path).
    if os.path.basename(root) not in ("site-packages", "dist-packages"):
        config.insert(1, f"mypy_path = {root}")
    (tmp_path / "mypy.ini").write_text("\n".join(config) + "\n")
    # mypy run in a child process: in-process it retunes gc and the
    # recursion limit for the rest of the test session.
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict",
         "--config-file", str(tmp_path / "mypy.ini"),
         "--cache-dir", str(tmp_path / "mypy_cache"),
         "-c", SNIPPET],
        cwd=str(tmp_path), capture_output=True, text=True, timeout=50)
    assert proc.returncode == 0, proc.stdout + proc.stderr
