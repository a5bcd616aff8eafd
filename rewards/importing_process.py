"""An import's reading and parsing in a process of its own.

A history import writes each chunk on one of two connections while the file is read and parsed.
In one process the writer threads waited for the parser thread's GIL before sending each
statement, PostgreSQL idle meanwhile (bench/RESULTS.md, "Import throughput"). Here the producer
of the chunks runs in a child process forked from the caller: it inherits the settings, the code
and the open file descriptors, and touches no database connection. Its items come back pickled
through a pipe, a chunk at a time; the pipe's buffer is the only queue, so the child runs at most
a chunk or two ahead and memory stays bounded.

Only where the "fork" start method exists (Linux, macOS): elsewhere the caller reads in a thread.
"""

from __future__ import annotations

import contextlib
import gc
import multiprocessing
import sys
import traceback
from collections.abc import Callable, Iterator
from typing import TypeVar

T = TypeVar("T")

# The child collects garbage once every this many items, and never while making one (_run).
COLLECT_EVERY = 10
# How long a child that finished (or was told to stop by the pipe closing) may take to exit
# before it is killed.
EXIT_WAIT = 5.0


class ReaderDied(RuntimeError):
    """The child process ended without saying it was done or why."""


def fork_available() -> bool:
    return "fork" in multiprocessing.get_all_start_methods()


def _run(produce: Callable[[], Iterator], send, receive) -> None:
    """In the child: send each item, then ("done", None); an error as ("error", exception)."""
    receive.close()  # the parent's end: a parent that goes away makes send() fail, not block
    # Making an item allocates objects by the thousand, which set off the collector's passes over
    # them again and again (a sixth of the reader's CPU); what it frees is freed by reference
    # counting, and the few cycles are collected between items.
    gc.disable()
    try:
        for number, item in enumerate(produce(), start=1):
            send.send(("item", item))
            if number % COLLECT_EVERY == 0:
                gc.collect()
        send.send(("done", None))
    except BrokenPipeError:
        pass  # the parent stopped reading: it left early
    except BaseException as exc:  # noqa: BLE001 - handed to the parent, who raises it
        exc.add_note(f"(in the import's reader process)\n{traceback.format_exc()}")
        try:
            send.send(("error", exc))
        except BrokenPipeError:
            pass
        except Exception:  # noqa: BLE001 - the exception does not pickle: its type and text do
            send.send(("error", RuntimeError(f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}")))
    finally:
        send.close()


@contextlib.contextmanager
def produced_in_child(produce: Callable[[], Iterator[T]], *, name: str) -> Iterator[Iterator[T]]:
    """The items of `produce()`, run in a child process (forked: `produce` may be a closure).

    An exception in the child is raised in the caller, with the child's traceback as a note; a
    child that dies without a word (killed, out of memory) raises ReaderDied. Leaving the block
    early stops the child. Start it before any thread of the caller that holds locks: a fork
    copies only the forking thread.
    """
    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)
    # Output buffered now would be written again by the child when it flushes at its exit.
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    process = context.Process(target=_run, args=(produce, send, receive), name=name, daemon=True)
    process.start()
    send.close()

    def items() -> Iterator[T]:
        while True:
            try:
                kind, value = receive.recv()
            except EOFError:
                process.join(EXIT_WAIT)
                raise ReaderDied(
                    f"The import's reader process ended unexpectedly (exit code {process.exitcode})."
                ) from None
            if kind == "done":
                return
            if kind == "error":
                raise value
            yield value

    try:
        yield items()
    finally:
        receive.close()  # a child still sending gets BrokenPipeError and exits
        process.join(EXIT_WAIT)
        if process.exitcode is None:
            process.kill()
            process.join()
        process.close()
