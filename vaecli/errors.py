"""Errors a user can cause. The CLI prints their message as one line and exits with `exit_code`;
nothing below the CLI knows about exit codes beyond this attribute."""


class VaeError(Exception):
    """A runtime failure the user can act on (missing data, unreadable file): exit 1."""

    exit_code = 1


class UsageError(VaeError):
    """A bad option, override or value: exit 2."""

    exit_code = 2


class Interrupted(VaeError):
    """SIGINT/SIGTERM during training; a checkpoint was written first and the message says how to
    resume. Exit 128 + the signal number (130 SIGINT, 143 SIGTERM), as a shell reports it."""

    def __init__(self, message: str, signum: int, announce: bool = True):
        super().__init__(message)
        self.signum = signum
        self.announce = announce  # under torchrun only rank 0 says it

    @property
    def exit_code(self) -> int:  # type: ignore[override]
        return 128 + int(self.signum)
