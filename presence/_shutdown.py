"""Shutdown within a bound, whatever Redis does and whatever a cancellation meets.

Cancelling a task is a request, and on Python 3.11 one can be lost: ``asyncio.wait_for``
returns the inner result and drops a cancellation that arrives in the pass of the loop in
which the inner awaitable finished (CPython gh-86296; 3.12 rebuilt ``wait_for`` on
``asyncio.timeout``). redis-py writes every command through such a ``wait_for``
(``Connection.send_packed_command``, whenever a socket timeout is set), so a task
cancelled just as it wrote a command goes on as if nothing had happened.

The pub/sub listener did. Cancelled by ``RedisStore.close()`` while it sent SUBSCRIBE (at
start-up, or re-subscribing after Redis came back), it went on reading: each of its
one-second reads runs under an ``asyncio.timeout`` that took the lost cancellation for
its own, so every read ended as "no message yet", and the listener looped for ever while
``close()`` awaited it. That was the 26-minute hang of the stateful test
(``tests/test_faults.py::test_closing_a_store_while_its_listener_subscribes_returns``
closes a store at each pass of the loop after subscribing, and hung within three passes).

:func:`stop` therefore cancels again until the task ends and gives up after a bound,
leaving the task to the event loop; :func:`settle` bounds any awaitable the same way.

:func:`on_stop_signal` tells the app that the process was asked to stop (SIGTERM, as a
deploy or restart sends, or SIGINT), before uvicorn closes its sockets: uvicorn tells
an app nothing until its lifespan's shutdown, after every socket has closed, and a
socket closed by the stop looks like any other (code 1012, which a client may send
too).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
from collections.abc import Awaitable, Callable, Iterator
from types import FrameType
from typing import Any

#: The signals uvicorn takes for "stop gracefully" (uvicorn.server.HANDLED_SIGNALS).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

# Cancellations sent within a bound: a lost one is followed by another soon enough.
_ATTEMPTS = 10


async def stop(task: asyncio.Future[Any] | None, seconds: float) -> bool:
    """Cancels ``task`` and waits at most ``seconds`` for it to end, cancelling it again
    every tenth of that while it goes on.

    Returns:
        Whether it ended; if not, it is left to run.
    """
    if task is None:
        return True
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not task.done():
        left = deadline - loop.time()
        if left <= 0:
            return False
        task.cancel()
        await asyncio.wait({task}, timeout=min(left, seconds / _ATTEMPTS))
    if not task.cancelled():
        task.exception()  # retrieved, so that asyncio does not log it as never retrieved
    return True


async def settle(awaitable: Awaitable[Any], seconds: float) -> bool:
    """Awaits ``awaitable`` for at most ``seconds``, then stops it as :func:`stop` does
    (for at most ``seconds`` more).

    Returns:
        Whether it finished in time; an exception it raised is not raised here.
    """
    task = asyncio.ensure_future(awaitable)
    done, _ = await asyncio.wait({task}, timeout=seconds)
    if done:
        if not task.cancelled():
            task.exception()
        return True
    await stop(task, seconds)
    return False


@contextlib.contextmanager
def on_stop_signal(callback: Callable[[], None]) -> Iterator[None]:
    """While inside, a stop signal calls ``callback`` and then the handler that was there
    before (uvicorn's, which begins its graceful shutdown; uvicorn installs it with
    ``signal.signal`` while it serves and restores its own predecessors after).

    ``callback`` runs inside the signal handler: it must only set a flag. Outside the
    main thread (a server run in a test's thread) no signal can be handled and nothing
    is chained, as uvicorn does there too. On exit the earlier handlers are put back,
    unless something else replaced ours meanwhile (ours then only passes signals on).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    chained: dict[int, Any] = {}
    inside = True

    def handler(signum: int, frame: FrameType | None) -> None:
        if inside:
            callback()
        earlier = chained.get(signum)
        if callable(earlier):
            earlier(signum, frame)
        elif earlier == signal.SIG_DFL:
            _default(signum)
        # SIG_IGN (or None, a handler not set from Python): ignored, as before.

    for signum in STOP_SIGNALS:
        chained[signum] = signal.signal(signum, handler)
    try:
        yield
    finally:
        # One chained after ours (another app in this process) keeps calling ours, which
        # then only passes the signal on.
        inside = False
        for number, earlier in chained.items():
            if signal.getsignal(number) is handler:
                signal.signal(number, earlier)


def _default(signum: int) -> None:
    """What the default action of a stop signal would have done: ends the process."""
    signal.signal(signum, signal.SIG_DFL)
    signal.raise_signal(signum)
