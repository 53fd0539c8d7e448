"""What every command-line tool shares: help, shared flags, quiet TensorFlow, logging, the runner.

Help that shows defaults and a one-line usage (an argparse error is two lines, not the
whole flag list); the flags several tools share, declared once: --seed ($RANDOM_SEED),
--img-size and the recipe flags (`add_recipe_flags`, with `OFF` for a `--no-X` that
switches a stored value off); the argparse types that refuse impossible numbers at parse
time (`int_at_least`, `float_in`); TensorFlow imported without its start-up banner;
logging (progress on stdout, warnings and errors on stderr, each message once, no
third-party traceback for an input error); a progress bar on stderr; and the guarded
runner (input errors one line, exit 2; bugs keep their traceback, exit 1), with the
checks that need no TensorFlow run before it loads. Atomic writes are `dm_output`'s.

Kept free of TensorFlow (and of the modules that import it) so `--help` answers at once.
"""
from __future__ import annotations

import argparse
import contextlib
import enum
import logging
import math
import os
import re
import sys
import tempfile
from typing import Any, Callable

from tqdm import tqdm

from dm_errors import InputError, one_line, wrapped_input_error  # noqa: F401  (re-exported)

# Start-up lines TensorFlow/XLA print on a machine without a GPU; they are not our messages.
_BANNER = re.compile(r"absl::InitializeLog|port\.cc:|cudart_stub\.cc|cpu_feature_guard\.cc|"
                     r"To enable the following instructions|cuda_platform\.cc|cuda_dnn\.cc|"
                     r"cuda_fft\.cc|cuda_blas\.cc|computation placer already registered|"
                     r"Unable to register cu|TF-TRT Warning|oneDNN custom operations")


class HelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default; switches say on/off; `--no-X` twins none.
    The usage line is `prog [options] POSITIONALS`: argparse's own lists every flag, which
    buried a one-word error under dozens of lines."""

    def _format_usage(self, usage, actions, groups, prefix):
        if usage is None:
            words = [self._prog]
            if any(a.option_strings for a in actions):
                words.append("[options]")
            words += [self._format_args(a, self._get_default_metavar_for_positional(a))
                      for a in actions if not a.option_strings and a.help != argparse.SUPPRESS]
            usage = " ".join(words).replace("%", "%%")
        return super()._format_usage(usage, actions, groups, prefix)

    def _get_help_string(self, action):
        text = action.help or ""
        if isinstance(action, argparse.BooleanOptionalAction):      # --X / --no-X in one
            text = text.replace(" (default: %(default)s)", "")
            return f"{text} (default: {'on' if action.default else 'off'})"
        if (not action.option_strings or "%(default)" in text or text == argparse.SUPPRESS
                or any(o.startswith("--no-") for o in action.option_strings)
                or isinstance(action, argparse._HelpAction)):
            return text
        d = action.default
        if isinstance(action, argparse._StoreTrueAction):
            return f"{text} (default: {'on' if d else 'off'})"
        if d is None or d == argparse.SUPPRESS or isinstance(action, argparse._StoreConstAction):
            return text
        shown = " ".join(str(v) for v in d) if isinstance(d, (list, tuple)) else str(d)
        return f"{text} (default: {shown.replace('%', '%%')})"


DEFAULT_SEED = 12345
MAX_SEED = 2 ** 32 - 1     # NumPy's and TensorFlow's seeds are unsigned 32-bit numbers


def _typed(cast: Callable, text: str, ok: Callable[[Any], bool], want: str):
    """`text` as `cast` (a finite number) for which `ok` holds, else argparse's one-line
    error saying what is wanted."""
    try:
        value = cast(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"invalid {cast.__name__} value: {text!r}") from None
    if not (math.isfinite(value) and ok(value)):
        raise argparse.ArgumentTypeError(f"{text}: {want}")
    return value


def int_at_least(low: int, high: int | None = None) -> Callable[[str], int]:
    """argparse type of a whole number >= `low` (and <= `high`): epochs (0), counts and
    batch sizes (1), so `--all-layer-epochs -3` stops at flag parsing, not after
    "training" nothing."""
    want = f"must be a whole number >= {low}" + (f" and <= {high}" if high is not None else "")

    def parse(text: str) -> int:
        return _typed(int, text, lambda v: v >= low and (high is None or v <= high), want)
    parse.__name__ = "int"
    return parse


def float_in(low: float | None = None, high: float | None = None, *, low_open: bool = False,
             high_open: bool = False) -> Callable[[str], float]:
    """argparse type of a finite number in [low, high] (`low_open`/`high_open`: that end
    excluded): learning rates > 0, weight decays >= 0, dropout rates in [0, 1)."""
    parts = ([f"{'>' if low_open else '>='} {low:g}"] if low is not None else []) + \
        ([f"{'<' if high_open else '<='} {high:g}"] if high is not None else [])
    want = "must be a finite number" + (" " + " and ".join(parts) if parts else "")

    def ok(v: float) -> bool:
        return ((low is None or (v > low if low_open else v >= low))
                and (high is None or (v < high if high_open else v <= high)))

    def parse(text: str) -> float:
        return _typed(float, text, ok, want)
    parse.__name__ = "float"
    return parse


seed_value = int_at_least(0, MAX_SEED)


def default_seed() -> int:
    """The seed every tool uses unless given --seed: $RANDOM_SEED, else DEFAULT_SEED. A value
    that is not a seed (a whole number 0 .. 2^32 - 1) stops the tool with one line (exit 2)."""
    value = os.environ.get("RANDOM_SEED")
    if value is None or value.strip() == "":
        return DEFAULT_SEED
    try:
        return seed_value(value)
    except argparse.ArgumentTypeError:
        tool = os.path.splitext(os.path.basename(sys.argv[0] or "tool"))[0]
        sys.stderr.write(f"{tool}: error: RANDOM_SEED={value!r}: not a seed (a whole number "
                         f"from 0 to {MAX_SEED})\n")
        raise SystemExit(2) from None


def add_seed_flag(parser, help: str) -> None:
    """--seed for a tool's parser (or argument group), defaulting to `default_seed()`."""
    parser.add_argument("--seed", dest="seed", type=seed_value, default=default_seed(),
                        help=f"{help} ($RANDOM_SEED, else {DEFAULT_SEED})")


def plural(n: int, word: str) -> str:
    """`1 image`, `2 images`: a count with its noun."""
    return f"{n} {word}{'' if n == 1 else 's'}"


def quiet_tensorflow() -> None:
    """Import TensorFlow and initialise its devices with the banner lines filtered out.

    Set DM_TF_VERBOSE=1 to see them. Any other line TensorFlow prints meanwhile is kept.
    """
    if "tensorflow" in sys.modules or os.environ.get("DM_TF_VERBOSE") == "1":
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as cap:
        os.dup2(cap.fileno(), 2)
        try:
            import tensorflow as tf  # deferred for --help (docs/modules.md)
            tf.config.list_physical_devices()
            import keras  # noqa: F401  deferred for --help (docs/modules.md)
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            cap.seek(0)
            kept = [l for l in cap.read().decode(errors="replace").splitlines(keepends=True)
                    if l.strip() and not _BANNER.search(l)]
            sys.stderr.write("".join(kept))
    _one_tensorflow_handler()


def _one_tensorflow_handler() -> None:
    """Drop the stderr handler TensorFlow gives its own logger when it first logs before the
    root logger has one: with ours on the root, each TensorFlow message (`Assets written`,
    retracing warnings) would otherwise print twice."""
    if not logging.getLogger().handlers:
        return
    tf_log = logging.getLogger("tensorflow")
    for h in list(tf_log.handlers):
        if type(h) is logging.StreamHandler and \
                getattr(h.formatter, "_fmt", None) == logging.BASIC_FORMAT:
            tf_log.removeHandler(h)


class _NoThirdPartyTraceback(logging.Filter):
    """pydicom logs its decoder's traceback before raising; the tool's one-line error already
    says what failed, so such records are dropped (docs/reliability.md: no third-party
    traceback for an input error)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and record.name.split(".")[0] in ("pydicom",))


def actions_without_help(parser: argparse.ArgumentParser) -> list[str]:
    """Option or argument names whose help is empty (every flag should say what it does)."""
    return [a.option_strings[0] if a.option_strings else a.dest for a in parser._actions
            if not (a.help or "").strip()]


class _LiveHandler(logging.StreamHandler):
    """Writes to whatever `sys.<which>` is at the time (so captured output sees it too)."""

    which = "stdout"

    def __init__(self) -> None:
        super().__init__()
        self.addFilter(_NoThirdPartyTraceback())

    @property
    def stream(self):
        return getattr(sys, self.which)

    @stream.setter
    def stream(self, value):
        pass


class _StdoutHandler(_LiveHandler):
    """Progress (INFO and below) on stdout; warnings and errors go to `_ProblemHandler`."""

    which = "stdout"

    def __init__(self) -> None:
        super().__init__()
        self.addFilter(lambda record: record.levelno < logging.WARNING)


class StderrHandler(_LiveHandler):
    """The log on stderr (e.g. while a tool's result goes to standard output)."""

    which = "stderr"


class _ProblemHandler(StderrHandler):
    """Warnings and errors on stderr, where a script or a user looks for them."""

    def __init__(self) -> None:
        super().__init__()
        self.setLevel(logging.WARNING)


_LOG_FORMAT = ("%(asctime)s %(name)s: %(message)s", "%H:%M:%S")


def setup_logging() -> None:
    """The one logging setup of every command: INFO messages with a time stamp on stdout,
    warnings and errors on stderr, once per process (other handlers kept)."""
    root = logging.getLogger()
    for kind in (_StdoutHandler, _ProblemHandler):
        if not any(type(h) is kind for h in root.handlers):
            handler = kind()
            handler.setFormatter(logging.Formatter(*_LOG_FORMAT))
            root.addHandler(handler)
    root.setLevel(logging.INFO)
    _one_tensorflow_handler()


@contextlib.contextmanager
def log_to_stderr():
    """The whole log on stderr for a while: the tool's result goes to standard output."""
    setup_logging()
    root = logging.getLogger()
    moved = [h for h in root.handlers if type(h) in (_StdoutHandler, _ProblemHandler)]
    err = StderrHandler()
    err.setFormatter(logging.Formatter(*_LOG_FORMAT))
    for h in moved:
        root.removeHandler(h)
    root.addHandler(err)
    try:
        yield
    finally:
        root.removeHandler(err)
        for h in moved:
            root.addHandler(h)


def is_input_error(e: BaseException) -> bool:
    """Bad input rather than a bug: an InputError, an OS error on a named file, or a
    TensorFlow error wrapping an InputError raised inside the input pipeline."""
    if isinstance(e, InputError):
        return True
    if isinstance(e, OSError) and getattr(e, "filename", None) is not None:
        return True   # the system refused a file the user named (missing, unreadable, disk full)
    tf = sys.modules.get("tensorflow")
    if tf is not None and isinstance(e, tf.errors.OpError):
        return wrapped_input_error(str(getattr(e, "message", None) or e)) is not None
    return False


def guarded(tool: str, fn: Callable, *args: Any) -> int:
    """Run a command's body. Input errors: one line `TOOL: error: ...`, exit status 2.

    Anything else is a bug and propagates with its traceback (Python exits 1).
    An int returned by `fn` is the exit status; anything else means 0.
    """
    try:
        result = fn(*args)
    except Exception as e:
        if not is_input_error(e):
            raise
        logging.getLogger(tool).error("error: %s", one_line(e))
        return 2
    return result if isinstance(result, int) else 0


def run_tool(tool: str, parse: Callable[[Any], Any], run: Callable, argv=None,
             tensorflow: bool | Callable[[Any], bool] = False, resumable: bool = False,
             precheck: Callable[[Any], Any] | None = None,
             stderr_log: bool | Callable[[Any], bool] = False) -> int:
    """A tool's `main`: parse its flags first (so --help answers before anything heavy
    loads), log (all of it on stderr with `stderr_log`, True or a test of the parsed flags:
    the tool's result goes to standard output), run `precheck(args)`: the refusals that
    need no TensorFlow (missing inputs, an output that would write over an input, a used
    folder), answered in about a second instead of after TensorFlow's start-up; a precheck
    that returns an int ends the command with that exit status (0: nothing to do). Then
    import TensorFlow quietly when the tool will use it (`tensorflow`: True, or a test of
    the parsed flags) and run it guarded. A `resumable` tool (the trainers, end2end)
    answers Ctrl-C with one line and exit status 130."""
    args = parse(argv)
    setup_logging()
    quiet = stderr_log(args) if callable(stderr_log) else stderr_log
    with log_to_stderr() if quiet else contextlib.nullcontext():
        if precheck is not None:
            outcome: list = []
            status = guarded(tool, lambda a: outcome.append(precheck(a)), args)
            if status != 0:
                return status
            if isinstance(outcome[0], int):
                return outcome[0]
        if tensorflow is True or (callable(tensorflow) and tensorflow(args)):
            quiet_tensorflow()
        try:
            return guarded(tool, run, args)
        except KeyboardInterrupt as e:
            if not resumable:
                raise
            logging.getLogger(tool).error("%s", interrupted_line(e))
            return 130


def pixels(text: str) -> int:
    """argparse type of image and patch sizes: a positive whole number of pixels (so
    `--img-size 0 0` stops at flag parsing, before anything loads)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value}: sizes must be positive (pixels)")
    return value


IMG_SIZE_HELP = "resize every image to H x W (cubic), as training does"


def add_img_size(parser, help: str = IMG_SIZE_HELP, default: list[int] | None = None,
                 dest: str = "img_size", short: bool = False) -> None:
    """The one `--img-size H W` (alias `--target-size`; `-is` for the original's scripts):
    in every tool, the height and width images are resized to by the recipe."""
    names = ["--img-size", "--target-size"] + (["-is"] if short else [])
    parser.add_argument(*names, dest=dest, nargs=2, type=pixels, default=default,
                        metavar=("H", "W"), help=help)


TOP_FRACTION = 0.02     # the multiple-instance head's top windows (docs/training.md)


def add_mil_flags(parser, what: str = "") -> None:
    """The one declaration of the multiple-instance head and bilateral model's flags
    (`--mil-pooling`, `--top-fraction`, `--bilateral`): the image trainer, end2end and the
    mini-MIAS cross-validation (docs/training.md). `what` prefixes their help."""
    parser.add_argument("--mil-pooling", dest="mil_pooling", choices=["top", "attention"],
                        default=None,
                        help=f"{what}a multiple-instance head on the patch classifier's window "
                             "map instead of the top blocks: the mean of its top "
                             "--top-fraction windows, or gated attention")
    parser.add_argument("--top-fraction", dest="top_fraction", default=TOP_FRACTION,
                        type=float_in(0, 1, low_open=True),
                        help="with --mil-pooling top: the fraction of windows averaged")
    parser.add_argument("--bilateral", dest="bilateral", action="store_true", default=False,
                        help=f"{what}the bilateral model: each breast with the same view of "
                             "the woman's other breast, mirrored; the head sees [own, own - "
                             "other] (implies --mil-pooling top unless given)")


class _Off(enum.Enum):
    """The type of `OFF` (an enum member keeps its identity through copies and pickles)."""

    OFF = "off"

    def __repr__(self) -> str:
        return "OFF"

    __str__ = __repr__


#: What a prediction tool's `--no-X` recipe flag stores: switch the model's stored item off.
#: (None means "not given: keep it"; `dm_recipe.apply_overrides` turns OFF into None.)
OFF = _Off.OFF


def add_recipe_flags(g, trainer: bool = False, img_size: bool = True) -> None:
    """The preprocessing recipe's flags, declared once for every tool that takes them.

    A trainer (`trainer=True`) sets the recipe a model is trained with: its defaults come
    from `dm_flags`, `--no-X` unsets a value (None). Otherwise the flags override a stored
    recipe (default None: keep it): `--no-img-scale`/`--no-rescale-factor` store `OFF` to
    switch the stored item off, and `--input-bits` supplies the depth of a model that
    records none. The original's aliases `-ic`/`-nic` are offered in both modes, `-is` with
    a trainer's size. `img_size=False` leaves `--img-size` to a tool that gives it another
    meaning (heatmap_score: the sliding window's resize). Parsed values become a `Recipe`
    in one place, `dm_recipe.recipe_from_flags`."""
    off = None if trainer else OFF
    if img_size:
        add_img_size(g, short=trainer)
    g.add_argument("--img-scale", "-ic", dest="img_scale", type=float_in(0, low_open=True),
                   help="scale each image so its maximum equals this")
    g.add_argument("--no-img-scale", "-nic", dest="img_scale", action="store_const",
                   const=off, help="unset --img-scale" if trainer
                   else "switch --img-scale off (no maximum scaling)")
    g.add_argument("--rescale-factor", dest="rescale_factor",
                   type=float_in(0, low_open=trainer),   # 0: "off" to convert_checkpoint
                   help="multiply pixels by this (255/65535 = 0.003891 for 16-bit PNG)")
    g.add_argument("--no-rescale-factor", dest="rescale_factor", action="store_const",
                   const=off, help="unset --rescale-factor" if trainer
                   else "switch --rescale-factor off (no rescaling)")
    g.add_argument("--featurewise-center", dest="featurewise_center", action="store_const",
                   const=True, help="subtract --featurewise-mean")
    g.add_argument("--no-featurewise-center", dest="featurewise_center", action="store_const",
                   const=False, help="do not subtract a mean")
    g.add_argument("--featurewise-mean", dest="featurewise_mean", type=float_in(),
                   help="the scalar mean to subtract (train-set pixel mean after rescaling)"
                   + ("" if trainer else "; turns centring on"))
    g.add_argument("--equalize-hist", dest="equalize_hist", action="store_const", const=True,
                   help="histogram-equalise each image (as 8 bits)")
    g.add_argument("--no-equalize-hist", dest="equalize_hist", action="store_const",
                   const=False, help="do not histogram-equalise")
    if not trainer:   # trainers record the depth of their training images themselves
        g.add_argument("--input-bits", dest="input_bits", type=int, choices=(8, 16),
                       help="bit depth of the images the model expects (replaces the "
                            "recorded one; needed for models that record none)")


def add_image_check_flags(parser, verb: str) -> None:
    """The flags that force images the model was not trained on (dm_preflight), declared
    once for every tool that scores images (`verb`: what the tool does with them)."""
    parser.add_argument("--allow-small-images", dest="allow_small", action="store_true",
                        help=f"{verb} images under half the size the model was trained at "
                             "(or, for the sliding window, under half a patch) instead of "
                             "refusing them")
    parser.add_argument("--allow-blank", action="store_true",
                        help=f"{verb} blank images (every pixel the same value) instead of "
                             "refusing them")
    parser.add_argument("--convert-bit-depth", action="store_true",
                        help="scale images of another bit depth to the one the model was "
                             "trained on (else they are refused)")
    parser.add_argument("--stored-bits", type=int, choices=range(1, 17), metavar="N",
                        help="bits the 16-bit PNGs really use (e.g. 12: with "
                             "--convert-bit-depth scaled like a DICOM with BitsStored N; "
                             "16: used as they are)")
    parser.add_argument("--allow-colour", action="store_true",
                        help=f"{verb} colour images (as their grey conversion) instead of "
                             "refusing them")


def interrupted_line(e: BaseException) -> str:
    """The one line a resumable tool prints on Ctrl-C (exit 130, the shell's code for
    SIGINT): the epoch, if the trainer set it on the exception, and that the same command
    resumes (each epoch is checkpointed, docs/reliability.md)."""
    epoch = getattr(e, "epoch", None)
    if not epoch:
        return "interrupted; rerun the same command to continue"
    return f"interrupted at epoch {epoch}; rerun the same command to resume"


def progress(total: int, desc: str, unit: str = "image"):
    """A tqdm progress bar on stderr (update it with `.update(n)`; close it or use `with`).

    Shown when stderr is a terminal; DM_PROGRESS=1 forces it on (e.g. into a log file),
    DM_PROGRESS=0 off.
    """
    forced = os.environ.get("DM_PROGRESS", "").strip()
    if forced in ("0", "1"):
        off = forced == "0"
    else:
        try:
            off = not sys.stderr.isatty()
        except (AttributeError, ValueError):
            off = True
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=off,
                dynamic_ncols=True)


def namespace(parser: argparse.ArgumentParser, **values: Any) -> argparse.Namespace:
    """A tool's parsed flags built from Python values: every flag at the parser's default
    (defined once, in the parser) except `values`, given by destination name. An unknown
    name is a TypeError (a caller's bug). Lets a tool's typed function call its `run`."""
    ns: dict[str, Any] = {}
    for a in parser._actions:        # as argparse does: the first action of a dest sets it
        if a.dest not in (argparse.SUPPRESS, "help") and a.default is not argparse.SUPPRESS:
            ns.setdefault(a.dest, a.default)
    for k, v in parser._defaults.items():
        ns.setdefault(k, v)
    unknown = sorted(set(values) - set(ns))
    if unknown:
        raise TypeError(f"{parser.prog}: unknown option(s) {unknown}")
    ns.update(values)
    return argparse.Namespace(**ns)
