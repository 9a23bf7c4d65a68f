"""Writing a command's output: to standard output (``--output -`` or none) or to a file, whole or not at all.

Every failure to write is one :class:`OutputError` naming the file or stream and the system's
reason (exit code 2 in the CLI); a reader that goes away (``sgdtrace run | head -1``) ends the
writing silently, so the command still exits with its verdict's own code.
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

from sgdtrace.errors import SgdtraceError

#: the --output value that means standard output, as Unix tools spell it
STDOUT = "-"


class OutputError(SgdtraceError):
    """The output could not be written (a full disk, a closed stream, a permission): exit code 2."""


def is_stdout(output: str | None) -> bool:
    return output is None or output == STDOUT


def destination_name(output: str | None) -> str:
    return "standard output" if is_stdout(output) else output  # type: ignore[return-value]


def write_pieces(pieces: Iterable[str], output: str | None) -> None:
    """Write ``pieces`` (produced as they are written: a long run's JSON) to ``output``.

    Standard output: a closed pipe stops the writing silently (standard output is pointed at
    the null device so that Python's own flush at exit stays quiet); any other error raises
    :class:`OutputError`. A file: written whole or not at all (:func:`atomic_write`).
    """
    if is_stdout(output):
        stream = sys.stdout
        try:
            for piece in pieces:
                stream.write(piece)
            stream.flush()
        except BrokenPipeError:
            silence_stdout()
        except OSError as exc:
            silence_stdout()  # what is left in the buffer cannot be written either
            raise OutputError(f"cannot write to standard output: {exc.strerror or exc}") from None
        return

    def write(path: str) -> None:
        with open(path, "w", encoding="utf-8") as fh:
            for piece in pieces:
                fh.write(piece)

    try:
        atomic_write(output, write)
    except BrokenPipeError:  # a FIFO whose reader left
        return
    except OSError as exc:
        raise OutputError(f"cannot write to {output}: {exc.strerror or exc}") from None


def silence_stdout() -> None:
    """Point file descriptor 1 at the null device and drop what is buffered for it."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # not a real file (a test's captured stream)
        pass


class Terminated(BaseException):
    """SIGTERM arrived: raised where the program is, so every cleanup runs (exit code 143)."""


@contextmanager
def terminate_cleanly() -> Iterator[None]:
    """Within this block, SIGTERM raises :class:`Terminated` instead of ending the process on the spot
    (which would leave a temporary file behind). Only the main thread can install a handler."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _can_mask() -> bool:
    return hasattr(signal, "pthread_sigmask") and threading.current_thread() is threading.main_thread()


def atomic_write(path: str, write: Callable[[str], None]) -> None:
    """Have ``write(tmp)`` fill a temporary file beside ``path``, then rename it into place.

    So an error, an interrupt or SIGTERM never leaves a half-written ``path`` nor the temporary
    file. The file gets the mode a plain ``open()`` would give (0666 less the umask; ``mkstemp``
    alone makes it private). A device or a pipe (``/dev/null``, a FIFO) is written in place:
    renaming over it would replace it. A symbolic link is written through: its target (the file at
    the end of the chain of links, made if missing) is replaced, and the link stays.
    """
    path = os.path.realpath(path) if os.path.islink(path) else path
    if os.path.exists(path) and not os.path.isfile(path):
        write(path)
        return
    with terminate_cleanly():
        # SIGTERM held back while the file is made, so it cannot land between its creation and the
        # cleanup's ``try`` below
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM}) if _can_mask() else None
        fd, tmp = tempfile.mkstemp(prefix=".sgdtrace-", dir=os.path.dirname(os.path.abspath(path)))
        try:
            if mask is not None:
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            os.close(fd)
            write(tmp)
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
