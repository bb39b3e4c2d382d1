"""The ``asdflow`` command line.

Each sub-command is a thin layer over one package function: parse the
arguments, call the function, print what it returns. Heavy modules are
imported inside the handlers so that ``asdflow --help`` answers at once.

Run ``asdflow COMMAND --help`` for the options of one command.

The modules (every name is importable from ``asdflow.cli`` itself):

- :mod:`asdflow.cli.parser` - the options, help texts and examples of every
  sub-command (:func:`build_parser`) and the checks of their values
  (:func:`check_arguments`);
- :mod:`asdflow.cli.commands` - the function that runs each sub-command
  (``asdflow train`` is :func:`cmd_train`, and so on);
- this module - :func:`main`, the entry point of the ``asdflow`` console
  script, and the one-line error messages.
"""

from __future__ import annotations

import sys

from asdflow.cli.commands import _overrides as _overrides
from asdflow.cli.commands import _set_threads as _set_threads
from asdflow.cli.commands import (
    cmd_bench,
    cmd_demo,
    cmd_download,
    cmd_evaluate,
    cmd_features,
    cmd_reproduce,
    cmd_synth,
    cmd_test,
    cmd_train,
)
from asdflow.cli.parser import _SMALLEST as _SMALLEST
from asdflow.cli.parser import _HelpFormatter as _HelpFormatter
from asdflow.cli.parser import build_parser, check_arguments
from asdflow.detector import MODELS, VARIANTS, table_order
from asdflow.errors import AsdflowError, ParameterError

__all__ = [
    "AsdflowError",
    "MODELS",
    "ParameterError",
    "VARIANTS",
    "build_parser",
    "check_arguments",
    "cmd_bench",
    "cmd_demo",
    "cmd_download",
    "cmd_evaluate",
    "cmd_features",
    "cmd_reproduce",
    "cmd_synth",
    "cmd_test",
    "cmd_train",
    "main",
    "table_order",
]


def _one_line(err: BaseException) -> str:
    """The message of an error on one line; an ``OSError`` names its file and the problem."""
    if isinstance(err, OSError) and not isinstance(err, AsdflowError):
        problem = err.strerror or type(err).__name__
        if isinstance(err, PermissionError):
            problem += " (check the permissions, or choose a folder you can write to)"
        files = [f for f in (err.filename, err.filename2) if f is not None]
        text = f"{' -> '.join(repr(str(f)) for f in files)}: {problem}" if files else str(err)
    else:
        text = str(err)
    return " ".join(text.split())


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``asdflow`` console script.

    Every asdflow error (:class:`asdflow.errors.AsdflowError`) and every
    operating-system error (a file that cannot be read or written) ends the
    command with one line on stderr that names the file and the problem, and
    exit status 2; ``--debug`` shows the traceback instead.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        check_arguments(args)
        return int(args.func(args) or 0)
    except (AsdflowError, OSError) as err:
        if args.debug:
            raise
        print(f"asdflow {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"asdflow {args.command}: interrupted", file=sys.stderr)
        return 130
