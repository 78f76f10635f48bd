"""Several workers on one listening socket, with connections shared out by how many each already holds.

uvicorn's workers each hand the shared socket to their event loop, which accepts every connection waiting
when it wakes: a burst of new connections (a client pool opening 64 at once) lands mostly on whichever
worker woke first, and stays there (keep-alive): 64 connections opened at once split as unevenly as 14 / 50
(the burst of tests/serve/test_operations.py, at commit 2cb5290), so one worker's requests waited while the other's
core idled. Here each worker accepts one connection per wake-up, and a worker that holds more connections
than another leaves a waiting one to the other for DEFER seconds per connection it holds more (at most
MAX_DEFER), so the less busy one has longer the further behind it is (a worker that is not scheduled for a
while on a busy machine); the counts are in shared memory (Loads).
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import socket

import uvicorn
from uvicorn.supervisors import multiprocess

log = logging.getLogger("uvicorn.error")
DEFER = 0.001  # how long a busier worker leaves a waiting connection to a less busy one, per connection more (s)
MAX_DEFER = 0.05  # the longest it waits before taking the connection itself (s)


class Loads:
    """Open connections per worker process, in shared memory: slots of (pid, count). A worker claims the
    slot of a process that is gone (a restarted worker takes over its predecessor's)."""

    def __init__(self, workers: int):
        self.slots = multiprocessing.get_context("spawn").Array("q", 2 * (2 * workers + 2))  # room for restarts
        self.mine: int | None = None

    def claim(self) -> None:
        pid = os.getpid()
        with self.slots.get_lock():
            for i in range(0, len(self.slots), 2):
                if self.slots[i] == 0 or not alive(self.slots[i]):
                    self.slots[i], self.slots[i + 1], self.mine = pid, 0, i
                    return
        log.warning("no free connection-count slot: this worker accepts without balancing")

    def publish(self, count: int) -> None:
        if self.mine is not None:
            self.slots[self.mine + 1] = count

    def lead(self, count: int) -> int:
        """How many connections more than the least busy other live worker `count` is (0 when none holds fewer)."""
        if self.mine is None:
            return 0
        slots = self.slots[:]  # one copy, without the lock: a count a moment old is good enough
        fewest = min(
            (slots[i + 1] for i in range(0, len(slots), 2) if slots[i] and i != self.mine and alive(slots[i])),
            default=count,
        )
        return max(count - fewest, 0)

    def release(self) -> None:
        if self.mine is not None:
            with self.slots.get_lock():
                self.slots[self.mine], self.slots[self.mine + 1] = 0, 0
            self.mine = None


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):  # gone, or the pid now belongs to another user's process
        return False
    return True


class OneAtATime:
    """Accepts from `sock` one connection per readiness event, after DEFER per connection more than the least
    busy other worker holds (`count()`: this worker's open connections); closes like the asyncio.Server it stands in for
    (uvicorn's shutdown calls close() and wait_closed())."""

    def __init__(
        self, sock: socket.socket, loop: asyncio.AbstractEventLoop, protocol_factory, backlog: int, count, loads: Loads
    ):
        self.sock, self.loop, self.protocol_factory, self.count, self.loads = sock, loop, protocol_factory, count, loads
        sock.listen(backlog)  # what the event loop's create_server would do (uvicorn binds, it listens)
        sock.setblocking(False)
        self.closed = False
        self.listen()

    def listen(self) -> None:
        if not self.closed:
            self.loop.add_reader(self.sock.fileno(), self.ready)

    def ready(self) -> None:
        count = self.count()
        self.loads.publish(count)
        lead = self.loads.lead(count)
        if lead:
            self.loop.remove_reader(self.sock.fileno())  # it would wake us for the same connection meanwhile
            self.loop.call_later(min(DEFER * lead, MAX_DEFER), self.accept_and_listen)
        else:
            self.accept()

    def accept_and_listen(self) -> None:
        if not self.closed and self.accept():
            self.listen()

    def accept(self) -> bool:
        """Takes one waiting connection, if another worker has not; False when accepting fails and
        listening pauses for a second."""
        try:
            conn, _ = self.sock.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return True  # another worker took it, or the client gave up before we did
        except OSError as exc:  # out of file descriptors, say: serve the connections we have, try again in 1 s
            log.error("accepting a connection: %s", exc)
            self.loop.remove_reader(self.sock.fileno())
            self.loop.call_later(1, self.listen)
            return False
        conn.setblocking(False)
        self.loads.publish(self.count() + 1)
        self.loop.create_task(self.serve(conn))
        return True

    async def serve(self, conn: socket.socket) -> None:
        try:
            await self.loop.connect_accepted_socket(self.protocol_factory, conn)
        except OSError as exc:  # the connection went away in between
            log.debug("connection lost before it was served: %s", exc)
            conn.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.loop.remove_reader(self.sock.fileno())
            self.loads.release()

    async def wait_closed(self) -> None:
        return None


class WorkerServer(uvicorn.Server):
    """uvicorn's worker with the shared socket served by OneAtATime instead of the event loop's own
    accept loop; the rest (lifespan, protocol, limits, graceful shutdown) is uvicorn's."""

    def __init__(self, config: uvicorn.Config, loads: Loads):
        super().__init__(config)
        self.loads = loads

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=[])  # the app's lifespan and uvicorn's state, no listener yet
        loop = asyncio.get_running_loop()
        config, state = self.config, self.server_state

        def protocol() -> asyncio.Protocol:
            return config.http_protocol_class(
                config=config, server_state=state, app_state=self.lifespan.state, _loop=loop
            )

        def count() -> int:
            return len(state.connections)

        self.loads.claim()
        self.servers = [OneAtATime(sock, loop, protocol, config.backlog, count, self.loads) for sock in sockets or []]
        loop.call_later(0.1, self.publish_every, 0.1, count)

    def publish_every(self, seconds: float, count) -> None:
        """Connections also close: keep this worker's count current between accepts."""
        if not self.should_exit:
            self.loads.publish(count())
            asyncio.get_running_loop().call_later(seconds, self.publish_every, seconds, count)


class WorkerProcess(multiprocess.Process):
    """uvicorn's worker process running WorkerServer; `loads` is shared by every worker (set before the
    supervisor starts them)."""

    loads: Loads | None = None

    def __init__(self, config: uvicorn.Config, sockets: list[socket.socket]):
        super().__init__(config, sockets)
        self.shared_loads = WorkerProcess.loads  # an attribute of the instance, so it travels to the child

    @property
    def server(self) -> uvicorn.Server:
        if self._server is None:
            self._server = WorkerServer(config=self.config, loads=self.shared_loads)
        return self._server
