"""Errors a user can cause. The CLI prints their message as one line and exits with `exit_code`."""


class VaeError(Exception):
    """A runtime failure the user can act on (missing data, unreadable file): exit 1."""

    exit_code = 1


class UsageError(VaeError):
    """A bad option, override or value: exit 2."""

    exit_code = 2
