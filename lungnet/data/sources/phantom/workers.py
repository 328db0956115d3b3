"""A fail-fast process pool for rendering, and SIGTERM turned into a clean exit.

:func:`run_pool` runs tasks in forked worker processes and never waits on a worker that is gone:

- an exception raised in a worker (an ``OSError`` ENOSPC, a bug) is sent back and raised in the parent at
  once, with the worker's traceback as its cause; the other workers are terminated;
- a worker that dies without a word (killed by the out-of-memory killer, SIGBUS from a memory map on a full
  disk, ``os._exit``) is noticed through its process sentinel and is :class:`WorkerDied`, a
  :class:`~lungnet.errors.DataError` naming the entry being built, the worker and its signal or exit status;
- workers ignore SIGINT (the parent stops them), take the default action on SIGTERM, and die with the
  parent (``PR_SET_PDEATHSIG`` on Linux, and end of file on their pipe), so a killed build leaves no
  orphan workers holding memory.

:func:`sigterm_exits` makes SIGTERM raise ``SystemExit(143)`` in the main thread for the duration of a
block, so ``finally`` clauses and context managers (the partial entry's clean-up) run; the previous
handler is restored afterwards. It only does so where SIGTERM has its default action: an application that
handles or ignores SIGTERM itself keeps its handler. A second SIGTERM during the clean-up kills at once.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterator, Sequence
from multiprocessing.connection import wait as wait_for
from pathlib import Path

from lungnet.errors import DataError


class WorkerDied(DataError):
    """A worker process ended without a reply; `exitcode` is its status (negative: killed by that signal)."""

    def __init__(self, message: str, exitcode: int | None):
        super().__init__(message)
        self.exitcode = exitcode


class RemoteTraceback(Exception):
    """The traceback of an exception raised in a worker process (attached as the parent's __cause__)."""

    def __str__(self) -> str:
        return f"\n(in the worker process)\n{self.args[0]}"


@contextlib.contextmanager
def sigterm_exits() -> Iterator[None]:
    """Within the block, SIGTERM raises SystemExit(128 + SIGTERM) in the main thread (see the module doc)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    if previous is not signal.SIG_DFL:
        yield
        return

    def _exit(signum, frame):
        signal.signal(signal.SIGTERM, previous)  # a second SIGTERM during the clean-up kills at once
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _exit)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _die_with_parent(parent_pid: int) -> None:
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def _worker_main(conn, inherited, close_fds, parent_pid: int, function: Callable) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _die_with_parent(parent_pid)
    for other in inherited:  # so that the parent's death is an end of file on our pipe
        other.close()
    for fd in close_fds:  # e.g. the partial entry's lock: only the builder itself may hold it
        with contextlib.suppress(OSError):
            os.close(fd)
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            break
        if task is None:
            break
        try:
            reply = ("ok", function(task), None)
        except BaseException as exc:  # noqa: BLE001 - everything goes back to the parent
            reply = ("error", exc, traceback.format_exc())
        try:
            try:
                conn.send(reply)
            except Exception:  # an exception that does not pickle
                exc = reply[1]
                conn.send(("error", RuntimeError(f"{type(exc).__name__}: {exc}"), reply[2]))
        except OSError:
            break  # the parent is gone
        if reply[0] == "error":
            break
    conn.close()


def _describe_exit(process) -> str:
    process.join(timeout=2)
    code = process.exitcode
    if code is None:
        return "stopped answering"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = {
            "SIGKILL": " (the out-of-memory killer, or someone killed it)",
            "SIGBUS": " (a memory-mapped write failed: a full disk or a truncated file)",
        }.get(name, "")
        return f"was killed by {name}{hint}"
    return f"exited with status {code}"


def run_pool(
    function: Callable,
    tasks: Sequence,
    workers: int,
    on_result: Callable,
    building: Path,
    close_fds: Sequence[int] = (),
) -> None:
    """Run ``function(task)`` for every task in `workers` forked processes; `on_result` gets each result.

    The workers are forked, so `function` may be anything (a function patched in a test included). Raises
    the first worker exception, or WorkerDied (a DataError) naming `building` (the entry being built) when
    a worker dies; the remaining workers are terminated either way.
    """
    ctx = multiprocessing.get_context("fork")
    workers = max(1, min(workers, len(tasks)))
    pipes = [ctx.Pipe() for _ in range(workers)]
    parent_ends = [p for p, _ in pipes]
    child_ends = [c for _, c in pipes]
    processes, finished = [], False
    try:
        for i, child in enumerate(child_ends):
            inherited = [c for j, c in enumerate(child_ends) if j != i] + parent_ends
            process = ctx.Process(
                target=_worker_main,
                args=(child, inherited, tuple(close_fds), os.getpid(), function),
                name=f"lidc-phantom-render-{i}",
                daemon=True,
            )
            process.start()
            processes.append(process)
        for child in child_ends:
            child.close()
        owner = dict(zip(parent_ends, processes, strict=True))
        queue = list(reversed(tasks))
        busy = set()
        for conn in parent_ends:
            conn.send(queue.pop())
            busy.add(conn)
        while busy:
            ready = set(wait_for([*busy, *(owner[c].sentinel for c in busy)]))
            for conn in list(busy):
                process = owner[conn]
                if conn in ready:
                    try:
                        status, payload, remote = conn.recv()
                    except (EOFError, OSError):
                        status = "died"
                    if status == "ok":
                        on_result(payload)
                        if queue:
                            conn.send(queue.pop())
                        else:
                            conn.send(None)
                            busy.discard(conn)
                        continue
                    if status == "error":
                        raise payload from RemoteTraceback(remote)
                elif process.sentinel not in ready:
                    continue
                raise WorkerDied(
                    f"{building}: rendering worker {process.name} (pid {process.pid}) "
                    f"{_describe_exit(process)} while building it; the partial build was deleted",
                    process.exitcode,
                )
        finished = True
    finally:
        for conn in parent_ends:
            conn.close()
        for process in processes:
            if not finished and process.is_alive():
                process.terminate()
        for process in processes:
            process.join(timeout=10 if finished else 5)
            if process.is_alive():
                process.kill()
                process.join()
