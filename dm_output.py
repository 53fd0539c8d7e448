"""Writing output files safely: temporary file then rename, without the two traps of that.

A rename replaces whatever the name points at, so renaming onto `/dev/stdout` (a symlink)
or a FIFO would turn it into a plain file: such targets are written through instead.
Temporary files are created with mode 0600 (0700 for folders), which a rename would keep:
the final file gets the mode any other tool would give it (0666 / 0777 minus the umask).
`-` means standard output. Before any work, a tool checks its outputs: writable
(`check_writable`) and none of them one of its inputs (`check_not_input`: no tool writes
over what it reads). See docs/reliability.md.
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
    except (FileNotFoundError, NotADirectoryError):
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


def _as_user_error(e: OSError, tmp: str, path: str) -> OSError:
    """The same OS error naming the user's `path` instead of our hidden temporary name."""
    names = (e.filename, getattr(e, "filename2", None))
    if any(n is not None and os.fspath(n).startswith(os.fspath(tmp)) for n in names):
        return type(e)(e.errno, e.strerror, path)
    return e


def temp_path(path: str, suffix: str = "") -> str:
    """A new empty temporary file beside `path` (for writers that need a file name)."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=suffix,
                                   dir=folder)
    except OSError as e:
        raise type(e)(e.errno, e.strerror, path) from None
    os.close(fd)
    return tmp


def write_named(path: str, writer: Callable[[str], None], suffix: str = "") -> None:
    """Atomic write for writers that need a file name (`writer(tmp_name)`, e.g. Keras or
    matplotlib saving): a temporary file beside `path` (with `suffix`, for writers that go
    by the extension), renamed into place; removed if writing fails. An OS error names
    `path`, never the temporary file."""
    tmp = temp_path(path, suffix)
    try:
        writer(tmp)
        replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(e, OSError):
            raise _as_user_error(e, tmp, path) from None
        raise


def _temp_folder(path: str) -> str:
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        return tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(path))}.", dir=folder)
    except OSError as e:
        raise type(e)(e.errno, e.strerror, path) from None


def write_folder(path: str, writer: Callable[[str], None]) -> None:
    """Atomic write of a whole folder: `writer(tmp_folder)` fills a temporary folder beside
    `path`, which then replaces it; removed if writing fails."""
    with Staging() as stage:
        writer(stage.folder(path))


class Staging:
    """Several outputs written under temporary names beside their own, renamed into place
    together only when all are complete: if any fails, every earlier file stays as it was
    (e.g. a SavedModel and an ONNX file exported in one command).

        with Staging() as stage:
            save_folder(stage.folder("exported/"))
            save_file(stage.file("model.onnx"))
    """

    def __init__(self) -> None:
        self._items: list[tuple[str, str, bool]] = []

    def folder(self, path: str) -> str:
        """A temporary folder that will become `path`."""
        tmp = _temp_folder(path)
        self._items.append((tmp, path, True))
        return tmp

    def file(self, path: str, suffix: str = "") -> str:
        """A temporary file name that will become `path`."""
        tmp = temp_path(path, suffix)
        self._items.append((tmp, path, False))
        return tmp

    def __enter__(self) -> "Staging":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                for tmp, path, folder in self._items:
                    replace(tmp, path, folder=folder)
        finally:
            for tmp, _, _ in self._items:     # what was not renamed into place
                if os.path.isdir(tmp):
                    shutil.rmtree(tmp, ignore_errors=True)
                elif os.path.exists(tmp):
                    os.remove(tmp)
        if isinstance(exc, OSError):
            for tmp, path, _ in self._items:
                err = _as_user_error(exc, tmp, path)
                if err is not exc:
                    raise err from None


def check_writable(path: str | None, flag: str = "--out", folder: bool = False) -> None:
    """Refuse (one line) an output location that cannot be written, before any work: the
    nearest existing folder on the way to `path` must be a folder where a file can be
    created (tried, not guessed from the mode bits); `path` itself must not be a folder
    (or, for `folder`, a file). `-` and devices/FIFOs/symlinks written through pass."""
    if path is None or is_stdout(path) or is_special(path):
        return
    if os.path.isdir(path) and not folder:
        raise OutputRefusedError(f"{path}: is a folder ({flag} takes a file name)")
    if os.path.exists(path) and not os.path.isdir(path) and folder:
        raise OutputRefusedError(f"{path}: is a file ({flag} takes a folder name)")
    parent = os.path.abspath(path) if folder and os.path.isdir(path) else \
        os.path.dirname(os.path.abspath(path))       # an existing folder is written into
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise OutputRefusedError(f"{path}: cannot be written ({parent} is a file, not a "
                                 f"folder) ({flag})")
    try:
        fd, probe = tempfile.mkstemp(prefix=".dm_write_test.", dir=parent)
    except OSError as e:
        raise OutputRefusedError(f"{path}: cannot be written ({parent}: "
                                 f"{e.strerror or e}) ({flag})") from None
    os.close(fd)
    os.remove(probe)


def _stat(path: str):
    try:
        return os.stat(path)
    except (OSError, ValueError):
        return None


def check_not_input(path: str | os.PathLike | None, inputs, flag: str = "--out",
                    holds: bool = False) -> None:
    """Refuse (one line, before any work) an output that is one of the command's inputs: no
    tool writes over what it reads. The same file or folder is recognised under any
    spelling: relative or absolute, through a symlink (written through, it would replace
    its target) or a hard link. With `holds` (`path` is a folder the command replaces or
    fills as its own) an input inside it is refused too.

    `inputs`: paths, or (flag, path) pairs naming where each came from; None is skipped.
    `-` and this process's standard output are never an input."""
    if path is None or is_stdout(os.fspath(path)):
        return
    path = os.fspath(path)
    real, st = os.path.realpath(path), _stat(path)
    inside = real.rstrip(os.sep) + os.sep
    for item in inputs:
        what, given = item if isinstance(item, tuple) else ("input", item)
        if given is None:
            continue
        given = os.fspath(given)
        other = os.path.realpath(given)
        named = f"the {what}" + ("" if given == path else f" {given}")
        if other == real or (st is not None and (o := _stat(given)) is not None
                             and os.path.samestat(st, o)):
            raise OutputRefusedError(f"{path} ({flag}) is {named}, which this command reads: "
                                     f"writing it would replace the input; choose another "
                                     f"{flag}")
        if holds and other.startswith(inside):
            raise OutputRefusedError(f"{path} ({flag}) holds {named}, which this command "
                                     f"reads: writing the folder would replace or mix with "
                                     f"the input; choose another {flag}")
