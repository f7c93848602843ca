"""How a stage's process ends, for the MLflow runs it leaves behind.

SIGTERM (`kill`, `timeout`, a CI cancel, `docker stop`) stops a stage as Ctrl-C does: as an exception
that unwinds it, so its open MLflow run is closed (KILLED, with the reason) and its temporary outputs
are removed. A process killed outright (SIGKILL, a power cut) cannot close its run: every run records
the host and process that opened it, and the next run in its experiment marks it once that process is
gone (`pipeline.stages.tracking`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from types import FrameType

HOST = socket.gethostname()


class Terminated(BaseException):
    """SIGTERM arrived. A BaseException, like KeyboardInterrupt, so no `except Exception` swallows it."""


STOPPED = (Terminated, KeyboardInterrupt)  # a stage stopped from outside: its run is KILLED, not FAILED


def _terminate(signum: int, _frame: FrameType | None) -> None:
    signal.signal(signum, signal.SIG_DFL)  # a second SIGTERM kills at once, should the cleanup hang
    raise Terminated(f"terminated by {signal.Signals(signum).name}")


@contextlib.contextmanager
def sigterm_stops() -> Iterator[None]:
    """Inside the block, SIGTERM raises Terminated; a Terminated that leaves it is one line on stderr
    and exit status 143 (128 + SIGTERM), as a shell reports a process SIGTERM ended."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread gets signals
        yield
        return
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        yield
    except Terminated as stopped:
        print(f"error: {stopped}", file=sys.stderr)
        sys.exit(128 + signal.SIGTERM)
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)  # None: set in C


def owner() -> dict[str, str]:
    """Tags naming this process, for `is_gone` to tell later whether it still runs."""
    return {"host": HOST, "pid": str(os.getpid())}


def is_gone(tags: dict[str, str]) -> bool:
    """Whether the process `owner()` described has ended: known only for a process of this host (a pid
    reused since counts as alive, so a run is never closed under a live process)."""
    if tags.get("host") != HOST or not tags.get("pid", "").isdigit():
        return False
    try:
        os.kill(int(tags["pid"]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, as another user
        return False
    return False
