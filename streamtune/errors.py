"""User-facing errors: one clear sentence, non-zero exit, no traceback wall."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable


class UserError(Exception):
    """An error the user can fix (bad path, bad config, bad data).

    Its message names the item and what to do; entry points print it and exit 2.
    """


def cli_entry(main: Callable[..., int]) -> Callable[..., int]:
    """Wrap an entry point's ``main`` so a :class:`UserError` prints one line and returns 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs) -> int:
        try:
            return main(*args, **kwargs)
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2

    return wrapper
