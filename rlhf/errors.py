"""Errors the ``rlhf`` command reports as one line, without a traceback (exit status 2)."""

from __future__ import annotations


class UserError(Exception):
    """A problem in the user's input: printed without a traceback, exit status 2."""
