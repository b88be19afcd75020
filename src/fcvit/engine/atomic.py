"""Files that appear whole or not at all: checkpoints, exports, metrics and reports.

:func:`atomic_write` lets a writer fill a temporary file beside the target, fsyncs it and
``os.replace``-s it over the target: a reader sees the old file or the new one, never half of one,
even if the process is killed mid-write.
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["DiskFullError", "atomic_write", "atomic_write_text"]


class DiskFullError(OSError):
    """No space left on the device of the directory being written to (errno ENOSPC); the old file is kept."""


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp)`` on a temporary path beside ``path`` (same suffix), then move it into place.

    A full disk raises :class:`DiskFullError` naming the directory (the target is untouched, the partial
    temporary file removed), however the writer reports it (torch and safetensors wrap the OSError).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the usual permissions
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if _disk_full(e):
            full = DiskFullError(
                f"no space left on {path.parent.resolve()} (writing {path.name}; nothing was replaced)"
            )
            full.errno = errno.ENOSPC
            raise full from e
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def _disk_full(e: BaseException) -> bool:
    """``e`` or an exception it was raised from is ENOSPC (torch.save reports it as a RuntimeError)."""
    while e is not None:
        if isinstance(e, OSError) and e.errno == errno.ENOSPC or "No space left on device" in str(e):
            return True
        e = e.__cause__ or e.__context__
    return False


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where directories cannot be opened (Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
