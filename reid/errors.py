"""Exception types for bad user input.

Entry points catch :class:`ReidError` and print its message as a single line,
so every message must name the bad thing and what was expected.
"""


class ReidError(Exception):
    """Bad user input: a wrong path, a malformed file, an unknown key."""


class UnknownNameError(ReidError, KeyError):
    """A name missing from a registry or a config tree."""

    # KeyError quotes its message; keep the one-line text as written.
    __str__ = Exception.__str__


class InputError(ReidError, ValueError):
    """A bad argument to a public function (a ValueError), shown as one line by the tools."""
