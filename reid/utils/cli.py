"""Entry-point plumbing: one-line errors and an exit code."""

import re
import sys
from collections.abc import Callable

from reid.errors import ReidError


def run_cli(main: Callable[[], object]) -> int:
    """Calls ``main``; bad input (ReidError) becomes one line on stderr and exit code 2.

    An error with an ``exit_code`` attribute (a training stopped by a signal) exits
    with that code instead.
    """
    try:
        main()
    except ReidError as err:
        print(f"error: {one_line(err)}", file=sys.stderr)
        return getattr(err, "exit_code", 2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


def one_line(err: ReidError) -> str:
    """The error's own message, also when a DataLoader worker wrapped it.

    Workers re-raise with the worker's traceback as the message; its last line is
    ``module.ClassName: <our message>``.
    """
    lines = [line for line in str(err).splitlines() if line.strip()]
    if not lines:
        return type(err).__name__
    return re.sub(r"^[\w.]+: ", "", lines[-1]) if len(lines) > 1 else lines[0]
