"""Writing output files safely: temporary file then rename, without the two traps of that.

A rename replaces whatever the name points at, so renaming onto `/dev/stdout` (a symlink)
or a FIFO would turn it into a plain file: such targets are written through instead.
Temporary files are created with mode 0600 (0700 for folders), which a rename would keep:
the final file gets the mode any other tool would give it (0666 / 0777 minus the umask).
`-` means standard output. See README "Reliability".
"""
from __future__ import annotations

import json
import os
import shutil
import stat
import sys
import tempfile
from typing import Any, Callable

from dm_errors import OutputRefusedError

STDOUT = "-"


def umask() -> int:
    """The process umask, read without changing it where the system allows."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def public_mode(path: str, folder: bool = False) -> None:
    """Give a freshly made temporary file (or folder) the mode a plain open()/mkdir() would."""
    os.chmod(path, (0o777 if folder else 0o666) & ~umask())


def is_special(path: str) -> bool:
    """A symlink, device, FIFO or socket: something a rename must not replace."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    return not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode))


def is_stdout(path: str | None) -> bool:
    """`-`, or a name for this process's standard output (`/dev/stdout`, `/dev/fd/1`)."""
    if path == STDOUT:
        return True
    if not path or not is_special(path):
        return False
    try:
        return os.path.samestat(os.stat(path), os.fstat(sys.stdout.fileno()))
    except (OSError, ValueError, AttributeError):
        return False


def atomic_write(path: str, writer: Callable, text: bool = False) -> None:
    """Write through `writer(fileobj)`; `-` is standard output.

    A regular (or new) file is written to a temporary file beside it and renamed into place,
    so nothing already there is lost if writing fails. A symlink, device or FIFO is opened and
    written through, never replaced.
    """
    kw = {"newline": ""} if text else {}
    if is_stdout(path):
        if text:
            writer(sys.stdout)
            sys.stdout.flush()
        else:
            sys.stdout.flush()
            writer(sys.stdout.buffer)
            sys.stdout.buffer.flush()
        return
    if is_special(path):
        with open(path, "w" if text else "wb", **kw) as f:
            writer(f)
        return

    def fill(tmp: str) -> None:
        with open(tmp, "w" if text else "wb", **kw) as f:
            writer(f)
    write_named(path, fill)


def write_json(path: str | os.PathLike, obj: Any, indent: int = 1, **dumps: Any) -> None:
    """A JSON file (summaries, layouts), written atomically (`atomic_write`)."""
    text = json.dumps(obj, indent=indent, **dumps) + "\n"
    atomic_write(str(path), lambda f: f.write(text), text=True)


def replace(tmp: str, path: str, folder: bool = False) -> None:
    """Rename a finished temporary file (or folder) onto `path` with the umask's mode.

    Refuses to replace a symlink, device or FIFO (`OutputRefusedError`, one line).
    """
    if is_special(path):
        raise OutputRefusedError(f"{path}: is a symlink, device or FIFO; refusing to replace it")
    public_mode(tmp, folder)
    if folder and os.path.isdir(path):
        shutil.rmtree(path)
    os.replace(tmp, path)


def temp_path(path: str, suffix: str = "") -> str:
    """A new empty temporary file beside `path` (for writers that need a file name)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=suffix, dir=folder)
    os.close(fd)
    return tmp


def write_named(path: str, writer: Callable[[str], None], suffix: str = "") -> None:
    """Atomic write for writers that need a file name (`writer(tmp_name)`, e.g. Keras or
    matplotlib saving): a temporary file beside `path` (with `suffix`, for writers that go
    by the extension), renamed into place; removed if writing fails."""
    tmp = temp_path(path, suffix)
    try:
        writer(tmp)
        replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_folder(path: str, writer: Callable[[str], None]) -> None:
    """Atomic write of a whole folder: `writer(tmp_folder)` fills a temporary folder beside
    `path`, which then replaces it; removed if writing fails."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(path))}.", dir=folder)
    try:
        writer(tmp)
        replace(tmp, path, folder=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
