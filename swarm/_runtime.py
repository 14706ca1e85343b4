"""Where worker sockets live, and how stale ones are told from live ones.

The run dir is private to the user: ``$SWARM_RUN_DIR`` if set, else
``$XDG_RUNTIME_DIR/swarm``, else ``<tempdir>/swarm-<uid>``. It is created
with mode 0700 and refused (never trusted) if another user owns it or if
group or others can enter it. Each worker listens on ``<run dir>/<pid>.sock``.
"""

from __future__ import annotations

import errno
import os
import stat

from swarm.errors import SwarmError

SOCKET_SUFFIX = ".sock"


def run_dir() -> str:
    """Return the private run dir, creating it (mode 0700) if needed."""
    path = os.environ.get("SWARM_RUN_DIR")
    if not path:
        xdg = os.environ.get("XDG_RUNTIME_DIR")
        if xdg and os.path.isdir(xdg):
            path = os.path.join(xdg, "swarm")
        else:
            import tempfile  # here: a pool's workers get SWARM_RUN_DIR, and start faster
            path = os.path.join(tempfile.gettempdir(), f"swarm-{os.getuid()}")
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise SwarmError(f"run dir {path} exists and is not a directory")
    if st.st_uid != os.getuid():
        raise SwarmError(
            f"run dir {path} belongs to uid {st.st_uid}, not to this user "
            f"(uid {os.getuid()}): refusing to use it")
    if st.st_mode & 0o077:
        raise SwarmError(
            f"run dir {path} has mode {stat.S_IMODE(st.st_mode):04o}; it must "
            "be private (0700) so that other users cannot reach the workers")
    return path


def socket_path(pid: int, directory: str | None = None) -> str:
    """Return the socket path of the worker with this pid."""
    return os.path.join(directory or run_dir(), f"{pid}{SOCKET_SUFFIX}")


def pid_alive(pid: int) -> bool:
    """True if a process with this pid exists (zombies count as gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in (b"Z", b"X")


def remove_stale_sockets(directory: str) -> list[str]:
    """Unlink socket files whose process is gone; return their paths."""
    removed = []
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return removed
    for name in names:
        stem, suffix = os.path.splitext(name)
        if suffix != SOCKET_SUFFIX or not stem.isdigit() or pid_alive(int(stem)):
            continue
        path = os.path.join(directory, name)
        try:
            os.unlink(path)
            removed.append(path)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                raise
    return removed
