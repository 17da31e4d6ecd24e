"""``presence._shutdown.on_stop_signal``: a stop signal reaches the app before the
server's own handler, which still runs; nothing is left behind once it is over."""

from __future__ import annotations

import os
import signal
import threading
import time
from types import FrameType

import pytest

from presence._shutdown import STOP_SIGNALS, on_stop_signal


def _deliver(signum: int) -> None:
    """Sends this process ``signum`` and lets its handler run (on the main thread)."""
    os.kill(os.getpid(), signum)
    time.sleep(0.01)


@pytest.fixture
def server_handler():
    """A stand-in for uvicorn's handler, installed as uvicorn does while it serves."""
    caught: list[int] = []

    def handle_exit(signum: int, frame: FrameType | None) -> None:
        caught.append(signum)

    before = {s: signal.signal(s, handle_exit) for s in STOP_SIGNALS}
    try:
        yield caught, handle_exit
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


@pytest.mark.parametrize("signum", STOP_SIGNALS)
def test_a_stop_signal_tells_the_app_first_then_the_server(server_handler, signum):
    caught, handle_exit = server_handler
    order: list[str] = []
    with on_stop_signal(lambda: order.append("app")):
        _deliver(signum)
        order.append(f"server saw {caught}")
    assert order == ["app", f"server saw {[int(signum)]}"]
    # Put back as it was: a signal after reaches the server's handler only.
    assert signal.getsignal(signum) is handle_exit
    _deliver(signum)
    assert caught == [signum, signum] and order.count("app") == 1


def test_many_signals_tell_the_app_each_time(server_handler):
    caught, _ = server_handler
    told = []
    with on_stop_signal(lambda: told.append(1)):
        for _ in range(200):
            _deliver(signal.SIGTERM)
    assert len(told) == 200 and len(caught) == 200


def test_one_left_behind_by_another_app_only_passes_signals_on(server_handler):
    """Two apps in one process, the first to start stopping first: the second's handler
    still chains to the first's, which tells its (stopped) app nothing."""
    caught, _ = server_handler
    first: list[int] = []
    second: list[int] = []
    outer = on_stop_signal(lambda: first.append(1))
    inner = on_stop_signal(lambda: second.append(1))
    outer.__enter__()
    inner.__enter__()
    outer.__exit__(None, None, None)  # not on top: stays, passing signals on
    _deliver(signal.SIGTERM)
    assert (first, second, caught) == ([], [1], [signal.SIGTERM])
    inner.__exit__(None, None, None)
    _deliver(signal.SIGTERM)
    assert (first, second, caught) == ([], [1], [signal.SIGTERM] * 2)


def test_off_the_main_thread_nothing_is_chained(server_handler):
    """A server run in a thread handles no signal (nor does uvicorn there)."""
    _, handle_exit = server_handler
    seen = []

    def run() -> None:
        with on_stop_signal(lambda: None):
            seen.append(signal.getsignal(signal.SIGTERM))

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(5)
    assert seen == [handle_exit]


def test_a_default_handler_still_ends_the_process():
    """With no server's handler (SIG_DFL), a SIGTERM still ends the process, after
    telling the app."""
    import subprocess
    import sys

    code = (
        "import os, signal, sys\n"
        "from presence._shutdown import on_stop_signal\n"
        "signal.signal(signal.SIGTERM, signal.SIG_DFL)\n"
        "with on_stop_signal(lambda: print('told', flush=True)):\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    import time; time.sleep(5)\n"
        "print('not ended', flush=True)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=30)
    assert done.returncode == -signal.SIGTERM
    assert done.stdout.decode().split() == ["told"]
