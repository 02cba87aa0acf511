"""How every command line tool reports a user's mistake: one or a few lines on stderr, naming
the file, row or flag and what to do, and exit code 2. `--debug` (or MASKRENDERER_DEBUG=1)
shows the traceback instead.

    if __name__ == "__main__":
        cli_errors.run(main)          # main(argv) -> anything

This module imports nothing of the project, so converters/, data_pipeline/ and
maskrenderer_jax/ all use it without cycles.
"""

import contextlib
import os
import sys
from collections.abc import Callable, Iterator

DEBUG_ENV = "MASKRENDERER_DEBUG"
EXIT_USAGE = 2


class UserError(ValueError):
    """A mistake in what the user asked for (a flag, a path, a config value); the message says
    what is wrong and what to do."""


# What a user's mistake raises: our messages name the file/row/flag. ValueError covers the
# project's ConversionError, UntrustedFileError and UserError (all subclasses).
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, IsADirectoryError,
               NotADirectoryError, PermissionError)  # fmt: skip


def debug_requested(debug: bool = False) -> bool:
    return debug or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def message(error: BaseException) -> str:
    """'error: ...' lines for `error` (the first line is the exception's own)."""
    text = str(error).strip()
    if isinstance(error, OSError) and error.filename is not None and error.strerror:
        text = f"{error.filename}: {error.strerror}"  # FileNotFoundError(errno, msg, path)
    if not text:
        text = type(error).__name__
    return f"error: {text}"


@contextlib.contextmanager
def reported(
    debug: bool = False, extra: tuple[type[BaseException], ...] = (), *, hint: bool = True
) -> Iterator[None]:
    """Turns USER_ERRORS (and `extra`) raised inside into `error: ...` on stderr (plus a line
    on how to see the traceback, with `hint`) and exit 2; with `debug` (or
    MASKRENDERER_DEBUG=1) they propagate with their traceback."""
    try:
        yield
    except (*USER_ERRORS, *extra) as e:
        if debug_requested(debug):
            raise
        print(message(e), file=sys.stderr)
        if hint:
            print(f"(rerun with --debug or {DEBUG_ENV}=1 for the traceback)", file=sys.stderr)
        sys.exit(EXIT_USAGE)


def run(main: Callable, argv: list[str] | None = None):
    """Calls main(argv) (default: sys.argv[1:]) under `reported`; a `--debug` flag is taken
    out of argv first, so every tool accepts it."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    with reported(debug):
        return main(argv)
