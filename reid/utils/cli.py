"""Entry-point plumbing: the tools' argument parser, one-line errors and an exit code."""

import argparse
import difflib
import re
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from reid.errors import ReidError


class CommandLineError(ReidError):
    """A command line the tool cannot read: an unknown flag, a key without a value."""


class ToolParser(argparse.ArgumentParser):
    """The tools' argument parser: flags anywhere among ``KEY VALUE`` overrides.

    With ``overrides=True``, every token that is neither one of the tool's flags nor a
    flag's value starts a ``KEY VALUE`` pair, collected in order in ``args.opts``. The
    value is the next token whatever it looks like (``-1``, ``[256, 128]``, ``-x``), so
    ``--resume`` may come before, between or after the pairs. A token at a key's place
    that starts with ``-`` is a flag: an unknown one is an error naming it and the
    tool's flags, never a config key. Every error is a :class:`CommandLineError` (one
    line), not argparse's usage-and-exit. Flags take zero or one value.

    Example:
        >>> parser = ToolParser("train", overrides=True)
        >>> _ = parser.add_argument("--resume", action="store_true")
        >>> parser.parse_args(["OUTPUT_DIR", "out", "--resume", "SOLVER.GAMMA", "-1"])
        Namespace(opts=['OUTPUT_DIR', 'out', 'SOLVER.GAMMA', '-1'], resume=True)
    """

    def __init__(self, description: str | None = None, *, overrides: bool = False) -> None:
        super().__init__(
            description=description,
            formatter_class=argparse.RawDescriptionHelpFormatter,
            allow_abbrev=False,  # --res is not --resume: a flag is spelled out or refused
        )
        self.overrides = overrides
        if overrides:
            self.add_argument(
                "opts", nargs="*", metavar="KEY VALUE", help="config overrides, among the flags"
            )

    def parse_args(
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> argparse.Namespace:
        """Parses ``args`` (default ``sys.argv[1:]``); overrides go to ``.opts``."""
        tokens = list(sys.argv[1:] if args is None else args)
        flags, opts = self._split(tokens)
        parsed = super().parse_args(flags, namespace)
        if self.overrides:
            parsed.opts = opts
        return parsed

    def error(self, message: str) -> NoReturn:
        """argparse's own errors (a missing --config, a bad --topk) as one line."""
        usage = " ".join(self.format_usage().split())
        raise CommandLineError(f"{message} ({usage})")

    def _split(self, tokens: list[str]) -> tuple[list[str], list[str]]:
        """The flag tokens, each with its value joined by ``=``, and the override tokens."""
        flags: list[str] = []
        opts: list[str] = []
        index = 0
        while index < len(tokens):
            token = tokens[index]
            if token.startswith("-") and token != "-":
                action = self._action(token)
                if "=" in token or action.nargs == 0 or self._is_flag(tokens[index + 1 :]):
                    flags.append(token)  # argparse names a missing value itself
                    index += 1
                elif action.nargs is None:
                    # Joined with "=", a value such as "-1" is never taken for a flag.
                    flags.append(f"{token}={tokens[index + 1]}")
                    index += 2
                else:
                    raise TypeError(f"ToolParser flags take zero or one value, not {token}")
            elif not self.overrides:
                raise CommandLineError(
                    f"unexpected argument {token!r}: {self.prog} takes only flags "
                    f"({', '.join(self._flag_names())})"
                )
            else:
                value = tokens[index + 1] if index + 1 < len(tokens) else None
                if value is None or self._is_flag([value]):
                    raise CommandLineError(
                        f"no value given for {token} (command line); overrides are KEY VALUE "
                        "pairs, such as OUTPUT_DIR output/run"
                    )
                opts += [token, value]
                index += 2
        return flags, opts

    def _is_flag(self, rest: list[str]) -> bool:
        """Whether the next token is missing or one of this tool's flags (not a value)."""
        return not rest or rest[0].split("=", 1)[0] in self._option_string_actions

    def _action(self, token: str) -> argparse.Action:
        name = token.split("=", 1)[0]
        if name in self._option_string_actions:
            return self._option_string_actions[name]
        spellings = [f for f in self._option_string_actions if f not in ("-h", "--help")]
        close = difflib.get_close_matches(name, spellings, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]}?" if close else ""
        takes = " and KEY VALUE overrides" if self.overrides else ""
        flags = ", ".join(self._flag_names())
        raise CommandLineError(f"unknown flag {name} ({self.prog} takes {flags}{takes}){hint}")

    def _flag_names(self) -> list[str]:
        # --flip/--no-flip: every spelling of a flag, so none looks unknown.
        return [
            "/".join(a.option_strings)
            for a in self._actions
            if a.option_strings and a.dest != "help"
        ]


# Importing a module runs its code, so a run folder's IMPORTS need the user's consent.
IMPORTS_HELP = (
    "plugin modules to import, comma-separated (e.g. my_project.backbones); the IMPORTS "
    "listed in a run's config.yaml are imported only when named here"
)


def module_list(text: str) -> list[str]:
    """``--imports a,b`` as ``["a", "b"]``; an empty text is an empty list."""
    return [name.strip() for name in text.split(",") if name.strip()]


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
