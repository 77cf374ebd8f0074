"""Peers that misbehave for real: an execution API that fails, a database that goes away.

``FaultyProxy`` stands between the run workers and the local execution API on a loopback
port of its own. While an outage lasts it answers 503, or passes a request on and then
hangs or resets the connection instead of answering, in turn; the API then has executed a
run whose answer the caller never got, which is what idempotency keys are for.

``PrivatePostgres`` is a PostgreSQL cluster of the test's own, made with the installed
server's ``initdb`` on a free port and stopped and started with its ``pg_ctl``: the
machine's shared server is never touched.
"""

import asyncio
import itertools
import os
import pwd
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

MODES = ("503", "hang", "reset")


async def _read_message(reader: asyncio.StreamReader) -> bytes:
    """One HTTP/1.1 message (head and a Content-Length body), as bytes."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    return head + (await reader.readexactly(length) if length else b"")


def _closing(response: bytes) -> bytes:
    """The response, told to close its connection: the proxy serves one request each."""
    head, _, body = response.partition(b"\r\n\r\n")
    status, *headers = head.split(b"\r\n")
    kept = [h for h in headers if not h.lower().startswith(b"connection:")]
    return b"\r\n".join([status, *kept, b"connection: close"]) + b"\r\n\r\n" + body


class FaultyProxy:
    """A loopback HTTP proxy to ``upstream`` that fails on demand; use as a context manager."""

    def __init__(self, upstream: str) -> None:
        host, port = upstream.removeprefix("http://").split(":")
        self.upstream = (host, int(port))
        self.outage_until = 0.0  # time.monotonic(); no outage by default
        self.faults: Counter[str] = Counter()
        self._modes = itertools.cycle(MODES)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self.url = ""

    def __enter__(self) -> "FaultyProxy":
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._serve, "127.0.0.1", 0), self._loop
        )
        self._server = future.result(timeout=10)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    def __exit__(self, *_exc: object) -> None:
        async def stop() -> None:
            assert self._server is not None
            self._server.close()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def fail_for(self, seconds: float) -> None:
        """Start an outage of ``seconds`` now."""
        self.outage_until = time.monotonic() + seconds

    @property
    def failing(self) -> bool:
        return time.monotonic() < self.outage_until

    async def _upstream(self, request: bytes) -> bytes:
        reader, writer = await asyncio.open_connection(*self.upstream)
        try:
            writer.write(request)
            await writer.drain()
            return await _read_message(reader)
        finally:
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await _read_message(reader)
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()
            return
        mode = next(self._modes) if self.failing else None
        try:
            if mode == "503":
                writer.write(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n")
            else:
                response = await self._upstream(request)
                if mode is None:
                    writer.write(_closing(response))
                elif mode == "hang":
                    # The run was executed; its answer never comes. Hold the connection until
                    # the caller gives up (or the outage ends), bounded either way.
                    while self.failing and not reader.at_eof():
                        await asyncio.sleep(0.2)
                else:  # reset: executed, then the connection is torn down
                    sock = writer.get_extra_info("socket")
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            if mode is not None:
                self.faults[mode] += 1
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrivatePostgres:
    """A throwaway PostgreSQL cluster on a free port, owned by this test alone."""

    def __init__(self) -> None:
        initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
        if not initdb or not pg_ctl:
            pytest.skip("initdb and pg_ctl are not installed: no private PostgreSQL cluster")
        self.prefix: list[str] = []
        self.owner: pwd.struct_passwd | None = None
        if os.geteuid() == 0:
            # The server refuses to run as root: run it as the packaged server's user.
            try:
                self.owner = pwd.getpwnam("postgres")
            except KeyError:
                pytest.skip("running as root with no postgres user to run a private cluster")
            self.prefix = ["runuser", "-u", "postgres", "--"]
        self.initdb, self.pg_ctl = initdb, pg_ctl
        self.dir = Path(tempfile.mkdtemp(prefix="graph_runs_pg_"))
        self.data = self.dir / "data"
        self.port = free_port()
        if self.owner is not None:
            os.chown(self.dir, self.owner.pw_uid, self.owner.pw_gid)
        self.dir.chmod(0o755)

    def _run(self, *argv: str) -> None:
        subprocess.run([*self.prefix, *argv], check=True, capture_output=True, timeout=120)

    def create(self) -> str:
        """Make and start the cluster; returns a URL to its ``postgres`` database."""
        self._run(self.initdb, "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        self.start()
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1"
        log = str(self.dir / "server.log")
        self._run(self.pg_ctl, "-D", str(self.data), "-o", options, "-l", log, "-w", "start")

    def stop(self) -> None:
        """Stop the server at once: open connections are cut, as in a crash or a failover."""
        self._run(self.pg_ctl, "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def destroy(self) -> None:
        if (self.data / "postmaster.pid").exists():
            try:
                self.stop()
            except subprocess.CalledProcessError:
                pass
        shutil.rmtree(self.dir, ignore_errors=True)
