"""A deadline for one outgoing request's sockets, however slowly the peer trickles.

Socket timeouts bound each read or write, not their sum: a server sending a byte a second never
times out. A timer shuts the registered sockets down when the deadline passes, which ends a
connect, read or write in progress. Used by callbacks (callbacks/http.py) and by the fetch of a
photo by URL (jobs/fetch.py).
"""

import socket
import threading
import time


class DeadlinePassed(OSError):
    """The deadline passed before the socket could be registered (a connection just made)."""


class SocketDeadline:
    """Sockets registered while it is entered are shut down once ``seconds`` pass, and closed
    on exit."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds
        self.expired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def remaining(self) -> float:
        return max(self.deadline - time.monotonic(), 0.001)

    def register(self, sock: socket.socket) -> None:
        # A duplicate of the descriptor: TLS detaches the original socket object, but shutdown()
        # acts on the connection, which every duplicate shares.
        with self._lock:
            if self.expired:
                raise DeadlinePassed("the request's total time is spent")
            self._sockets.append(sock.dup())

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._sockets:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def __enter__(self):
        self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self._timer.cancel()
        with self._lock:
            for sock in self._sockets:
                sock.close()
            self._sockets.clear()
