"""The writer thread's wake-up (server.storage.wakeup): a Condition's wait and notify for one waiter."""

from __future__ import annotations

import threading
import time

from server.storage.wakeup import Wakeup


def waiting(wakeup: Wakeup, timeout: float, results: list[bool]) -> threading.Thread:
    """A thread that waits once under the lock, its outcome appended to ``results``."""

    def wait() -> None:
        with wakeup.lock:
            results.append(wakeup.wait(timeout))

    thread = threading.Thread(target=wait)
    thread.start()
    return thread


def test_a_wait_times_out_unnotified_and_a_notify_with_nobody_waiting_is_not_kept() -> None:
    wakeup = Wakeup(threading.Lock())
    with wakeup.lock:
        wakeup.notify()  # nobody waits: nothing is kept for the next wait, as with a Condition
        started = time.monotonic()
        assert wakeup.wait(0.05) is False
        assert time.monotonic() - started >= 0.04


def test_a_notify_wakes_the_waiter_at_once() -> None:
    wakeup, results = Wakeup(threading.Lock()), list[bool]()
    thread = waiting(wakeup, 30, results)
    while True:  # until it waits (its flag is set under the lock, which it lets go to wait)
        with wakeup.lock:
            if wakeup._sleeping:
                started = time.monotonic()
                wakeup.notify()
                break
        time.sleep(0.001)
    thread.join(5)
    assert results == [True]
    assert time.monotonic() - started < 5


def test_a_notify_between_the_timeout_and_the_lock_wakes_the_waiter_and_leaves_nothing_behind() -> None:
    wakeup, results = Wakeup(threading.Lock()), list[bool]()
    wakeup.lock.acquire()
    thread = waiting(wakeup, 0.01, results)
    wakeup.lock.release()
    while True:
        wakeup.lock.acquire()
        if wakeup._sleeping:
            break
        wakeup.lock.release()
        time.sleep(0.001)
    time.sleep(0.1)  # its wait has timed out; it waits for the lock held here
    wakeup.notify()
    wakeup.lock.release()
    thread.join(5)
    assert results == [True]
    with wakeup.lock:  # the wake-up was taken: the next wait times out
        assert wakeup.wait(0.02) is False
