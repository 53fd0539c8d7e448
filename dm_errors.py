"""The project's one base for input errors, so a command can tell bad input from a bug.

Every problem with what a user gave (a file, a flag, a table, a model) is raised as an
`InputError` (or a subclass); the command-line runner (`dm_cli.guarded`) prints it as one line
naming the tool and exits 2. Any other exception is a bug: it keeps its traceback (exit 1).
`InputError` is a ValueError, so code that catches ValueError keeps working. See README
"Reliability".
"""
from __future__ import annotations


class InputError(ValueError):
    """Bad input: reported as `TOOL: error: MESSAGE` (one line), exit status 2."""


class InputFileNotFoundError(InputError, FileNotFoundError):
    """A file or folder the user named does not exist."""


class OutputRefusedError(InputError, OSError):
    """An output name the tool must not replace (a symlink, device or FIFO for a folder...)."""


class OriginalAPIError(InputError):
    """A name of the original project's API used in a way this project cannot reproduce;
    the message names the replacement (README, "Code written for the original")."""


def refuse(what: str, instead: str) -> OriginalAPIError:
    """The one-line refusal of an original feature, naming what to use instead."""
    return OriginalAPIError(f"{what} is not supported here; instead: {instead}")


def retired(qualname: str, instead: str):
    """A stand-in for an original name that cannot keep its behaviour: calling it raises
    `OriginalAPIError` naming `instead`."""
    def stand_in(*args, **kwargs):
        raise refuse(qualname, instead)
    stand_in.__name__ = stand_in.__qualname__ = qualname.rsplit(".", 1)[-1]
    stand_in.__doc__ = f"Retired: use {instead}."
    return stand_in


def input_error_classes() -> set[str]:
    """Names of every InputError subclass defined so far (to find them in wrapped messages)."""
    seen, todo = set(), [InputError]
    while todo:
        cls = todo.pop()
        if cls.__name__ not in seen:
            seen.add(cls.__name__)
            todo.extend(cls.__subclasses__())
    return seen


def wrapped_input_error(text: str) -> str | None:
    """The message of an InputError that TensorFlow wrapped into its own error text, or None.

    Errors raised inside `tf.data` (py_function) reach us as TensorFlow errors whose text
    contains `ClassName: message`.
    """
    for name in sorted(input_error_classes(), key=len, reverse=True):
        marker = f"{name}: "
        if marker in text:
            rest = text.split(marker, 1)[1].splitlines()
            return rest[0].strip() if rest else name
    return None


def one_line(e: BaseException) -> str:
    """The message a user needs: a wrapped InputError's line if there is one, else the first."""
    text = str(getattr(e, "message", None) or e)
    inner = wrapped_input_error(text)
    if inner is not None:
        return inner
    if isinstance(e, OSError) and e.filename is not None and e.strerror:
        return f"{e.filename}: {e.strerror}"
    lines = [l.strip() for l in text.splitlines() if l.strip()]
    return lines[0] if lines else type(e).__name__
