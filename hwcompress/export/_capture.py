"""What native code writes to a file descriptor, captured as text.

The runtimes' C++ parts print to fd 1 or 2 directly (the TorchScript ONNX exporter dumps its
graph, TFLite Micro's MicroPrintf reports kernel failures and arena sizes), past Python's
sys.stdout/sys.stderr; redirecting the descriptor itself is the only way to read it.
"""

from __future__ import annotations

import io
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def captured_fd(fd: int) -> Iterator[io.StringIO]:
    """Redirect `fd` (1 or 2) to a temporary file for the block; the StringIO holds what was
    written once the block ends (also when it raised), and the descriptor is restored."""
    (sys.stdout if fd == 1 else sys.stderr).flush()
    buf = io.StringIO()
    saved = os.dup(fd)
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), fd)
        try:
            yield buf
        finally:
            os.dup2(saved, fd)
            os.close(saved)
            sink.seek(0)
            buf.write(sink.read().decode(errors="replace"))
