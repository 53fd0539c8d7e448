"""The project's one base for input errors, so a command can tell bad input from a bug.

Every problem with what a user gave (a file, a flag, a table, a model) is raised as an
`InputError` (or a subclass); the command-line runner (`dm_cli.guarded`) prints it as one line
naming the tool and exits 2. Any other exception is a bug: it keeps its traceback (exit 1).
`InputError` is a ValueError, so code that catches ValueError keeps working. See
docs/reliability.md.
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
    the message names the replacement (docs/original.md, "Code written for the original")."""


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


MAX_LINE = 400   # characters of a one-line error message


def shorten(text: str, limit: int = MAX_LINE) -> str:
    """`text` on one line (whitespace runs collapsed); a longer one is cut in the middle, so
    its start (usually the file) and its end (usually the reason) both stay."""
    text = " ".join(str(text).split())
    if len(text) <= limit:
        return text
    tail = (limit - 5) // 2
    return f"{text[:limit - 5 - tail]} ... {text[-tail:]}"


def _message_lines(lines: list[str]) -> str:
    """The lines of a message up to a traceback TensorFlow (or Python) appended to it."""
    kept = []
    for line in lines:
        if line.startswith("Traceback (most recent call last)") or (kept and not line.strip()):
            break
        kept.append(line)
    return " ".join(kept)


def wrapped_input_error(text: str) -> str | None:
    """The message of an InputError that TensorFlow wrapped into its own error text, or None.

    Errors raised inside `tf.data` (py_function) reach us as TensorFlow errors whose text
    contains `ClassName: message` (all of the message's lines, then a traceback).
    """
    for name in sorted(input_error_classes(), key=len, reverse=True):
        marker = f"{name}: "
        if marker in text:
            rest = _message_lines(text.split(marker, 1)[1].splitlines())
            return shorten(rest) if rest.strip() else name
    return None


def one_line(e: BaseException) -> str:
    """The message a user needs, on one line: a wrapped InputError's message if there is one,
    else the whole message (a multi-line one joined, a long one cut in the middle, never at
    the end where the reason is)."""
    text = str(getattr(e, "message", None) or e)
    inner = wrapped_input_error(text)
    if inner is not None:
        return inner
    if isinstance(e, OSError) and e.filename is not None and e.strerror:
        return shorten(f"{e.filename}: {e.strerror}")
    return shorten(_message_lines(text.splitlines())) or type(e).__name__
