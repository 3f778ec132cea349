"""Atomic file writes: a file is always either its old or its new complete self."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from .errors import VaeError


def atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    """write(tmp) to a temp file beside `path`, fsync it, rename it over `path`.

    The parent folder is created. Any OSError (disk full, permission) removes the temp file and
    becomes a one-line VaeError; the previous `path`, if any, is untouched.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # some writers create 0600 files; honour the umask
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise VaeError(f"cannot write {path}: {e.strerror or e}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
