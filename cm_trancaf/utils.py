"""Small shared helpers: user-facing errors, atomic file writes, the TF start-up, peak memory."""
from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from pathlib import Path

__all__ = ["UserError", "atomic_path", "atomic_dir", "atomic_write_text", "import_tensorflow_quietly",
           "peak_memory_gb"]


class UserError(Exception):
    """A problem with the user's input (file, path, option): reported as one line, exit code 2."""


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# read once at import (setting it is process-wide, so not in threads that write): temporary
# files are created 0600 and folders 0700, and the outputs get the modes any new file would get
FILE_MODE = 0o666 & ~_read_umask()
DIR_MODE = 0o777 & ~_read_umask()


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str | None = None):
    """Yield a temporary path next to ``path``; rename it onto ``path`` only if the block succeeds.

    An interrupted write never leaves a file that looks complete. ``suffix`` keeps the extension
    that format-sniffing writers (SimpleITK: ``.nii.gz``) need.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix is None:
        suffix = "".join(path.suffixes)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | Path):
    """Yield a temporary folder next to ``path``; rename it to ``path`` (which must not exist)
    only if the block succeeds, else remove it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, DIR_MODE)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write UTF-8 text under a temporary name, then rename (whatever the process's locale)."""
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")


def import_tensorflow_quietly(verbose: bool = False, start=None) -> None:
    """Import TensorFlow and start its runtime with the process's stderr (fd 2) muted: its start-up
    lines (oneDNN, CUDA drivers, cuInit) come from C++ logging that ``TF_CPP_MIN_LOG_LEVEL`` no
    longer silences. ``start``: what starts the runtime (default: listing the devices); a
    MultiWorkerMirroredStrategy must be that first step, since collective ops are configured at
    start-up. ``verbose``: import as usual, lines and all. Errors still raise."""
    if verbose:
        import tensorflow as tf
        (start or tf.config.list_logical_devices)()
        return
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        import tensorflow as tf
        (start or tf.config.list_logical_devices)()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def peak_memory_gb() -> float:
    """This process's peak resident memory (GiB): ``VmHWM`` of ``/proc/self/status``.

    Not ``ru_maxrss``: Linux keeps it across ``execve``, so a child started by a large process
    (pytest holding a 512 x 512 x 240 phantom) reports its parent's size at the fork as its own."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2 ** 20                  # kB
    except OSError:
        pass
    import resource                      # no /proc (macOS): ru_maxrss, in bytes there
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 30
