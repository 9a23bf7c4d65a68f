"""Writing --output files: whole or not at all, with the usual permissions; devices written in place."""

from __future__ import annotations

import os
import tempfile
from typing import Callable


def atomic_write(path: str, write: Callable[[str], None]) -> None:
    """Have ``write(tmp)`` fill a temporary file beside ``path``, then rename it into place.

    So an error (or an interrupt) never leaves a half-written ``path``. The file gets the mode a
    plain ``open()`` would give (0666 less the umask; ``mkstemp`` alone makes it private). A
    device or a pipe (``/dev/null``, a FIFO) is written in place: renaming over it would replace it.
    """
    if os.path.exists(path) and not os.path.isfile(path):
        write(path)
        return
    fd, tmp = tempfile.mkstemp(prefix=".sgdtrace-", dir=os.path.dirname(os.path.abspath(path)))
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
