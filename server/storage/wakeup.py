"""A ``Condition``'s wait and notify for one waiting thread, without their Python.

``threading.Condition.wait`` allocates a lock at every wait, and both it and ``notify`` check by
calls of Python that the caller holds the lock: about three times what a wake-up by one lock
released costs (the writer thread waits once a batch, :mod:`.thread`). Here the waiter waits on a
lock of its own, held but while a wake-up is due, which a notifier releases only while the
waiter waits, so it is never released twice and a wake-up is never lost to a timeout.
"""

from __future__ import annotations

import threading


class Wakeup:
    """Wait and notify under ``lock`` (the caller holds it for both), for one waiter at a time."""

    __slots__ = ("_signal", "_sleeping", "lock")

    def __init__(self, lock: threading.Lock) -> None:
        self.lock = lock
        #: released to wake the waiter: held at all other times
        self._signal = threading.Lock()
        self._signal.acquire()
        #: the waiter waits for :attr:`_signal` (set and cleared under :attr:`lock`)
        self._sleeping = False

    def wait(self, timeout: float) -> bool:
        """Until :meth:`notify` or ``timeout`` (``lock`` released meanwhile): whether notified."""
        self._sleeping = True
        self.lock.release()
        try:
            woken = self._signal.acquire(True, timeout)
        finally:
            self.lock.acquire()
        if not woken:
            if self._sleeping:
                self._sleeping = False
            else:  # notified between the timeout and the lock: its release is taken here
                self._signal.acquire()
                woken = True
        return woken

    def notify(self) -> None:
        """Wake the waiter, if one waits."""
        if self._sleeping:
            self._sleeping = False
            self._signal.release()
