"""A local HTTP "model endpoint" for I/O-bound scoring: the I/O bench and the async run() tests use it.

`ScoringServer` listens on 127.0.0.1 (a free port) in a thread and answers ``GET /score?item=X`` with
``X<TAB>scored`` after `delay` seconds (plus a random `jitter`, so that answers come back in random
order). It counts every request per item (so a run can prove each item was called once per attempt)
and the most requests it held at once; `hold_until` makes the first requests wait until that many are in
flight (once, for at most `hold_s`), so that a test sees real overlap rather than a lucky one. Items in
`hold_except` (an entry script's init() call, say) are answered at once and left out of `in_flight` and
`peak`: an init() held until 16 run() calls are in flight would wait for calls that cannot start before
it returns.

`score` is a minimal asyncio HTTP/1.0 client (stdlib streams, one connection per request): the entry
scripts and the bench's bare asyncio client both use it, so both sides pay the same per-request cost.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from urllib.parse import parse_qs, quote, urlsplit
from urllib.request import urlopen


class _Server(ThreadingHTTPServer):
    # listen()'s backlog is read in __init__: the default 5 drops connections that arrive together, and
    # each dropped SYN costs the client a 1 s retransmission (mini-batches then take whole seconds longer)
    request_queue_size = 1024
    daemon_threads = True


class ScoringServer:
    """See the module's docstring. Use as a context manager (`close` stops the thread)."""

    def __init__(
        self,
        delay: float = 0.1,
        jitter: float = 0.0,
        hold_until: int = 0,
        hold_s: float = 10.0,
        seed: int = 0,
        hold_except: frozenset[str] = frozenset(),
    ) -> None:
        self.delay, self.jitter = delay, jitter
        self.hold_until, self.hold_s, self.hold_except = hold_until, hold_s, hold_except
        self.calls: Counter[str] = Counter()
        self.in_flight = 0
        self.peak = 0
        self._held = False
        self._random = random.Random(seed)
        self._lock = threading.Condition()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                path = urlsplit(self.path)
                if path.path == "/stats":  # the counts, for a server in another process
                    with server._lock:
                        stats = {"calls": dict(server.calls), "peak": server.peak}
                    body = json.dumps(stats).encode("utf-8")
                elif path.path == "/reset":
                    server.reset()
                    body = b"{}"
                else:
                    item = parse_qs(path.query).get("item", [""])[0]
                    body = server.answer(item).encode("utf-8")
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - quiet
                return

        self._httpd = _Server(("127.0.0.1", 0), Handler)
        self.host, self.port = "127.0.0.1", int(self._httpd.server_address[1])
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="scoring-server", daemon=True)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def answer(self, item: str) -> str:
        counted = item not in self.hold_except
        with self._lock:
            self.calls[item] += 1
            pause = self.delay + (self._random.uniform(0, self.jitter) if self.jitter else 0.0)
            if counted:
                self.in_flight += 1
                self.peak = max(self.peak, self.in_flight)
                self._lock.notify_all()
            if counted and self.hold_until and not self._held:
                deadline = time.monotonic() + self.hold_s
                while self.peak < self.hold_until and time.monotonic() < deadline:
                    self._lock.wait(max(deadline - time.monotonic(), 0))
                self._held = True  # held once (reached, or timed out): later requests never wait
                self._lock.notify_all()
        try:
            time.sleep(pause)
            return f"{item}\tscored"
        finally:
            if counted:
                with self._lock:
                    self.in_flight -= 1

    def reset(self) -> None:
        with self._lock:
            self.calls.clear()
            self.peak = 0
            self._held = False

    def __enter__(self) -> ScoringServer:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=10)


class ScoringServerProcess:
    """A `ScoringServer` in a process of its own (`python scoring_server.py --delay S`), so that its
    threads share no GIL with whoever is measured against it (the bench's driver, scheduler and bare
    client live in the bench's process). `calls` and `peak` are read over HTTP (/stats)."""

    @classmethod
    def attach(cls, address: str) -> ScoringServerProcess:
        """A handle on a server another process started (`calls`, `peak`, `reset`; closing it leaves the
        server running): the --compare-with child of bench/io_bound_bench.py checks its calls with it."""
        handle = cls.__new__(cls)
        handle._proc = None
        handle.address = address
        return handle

    def __init__(self, delay: float = 0.1) -> None:
        self._proc: subprocess.Popen[str] | None = subprocess.Popen(
            [sys.executable, __file__, "--delay", str(delay)], stdout=subprocess.PIPE, text=True
        )
        assert self._proc.stdout is not None
        self.address = self._proc.stdout.readline().strip()
        if not self.address:
            self._proc.kill()
            raise RuntimeError("the scoring server process did not start")

    def _get(self, path: str) -> dict[str, object]:
        with urlopen(f"http://{self.address}{path}", timeout=30) as answer:
            stats: dict[str, object] = json.loads(answer.read())
            return stats

    @property
    def calls(self) -> Counter[str]:
        return Counter(self._get("/stats")["calls"])  # type: ignore[arg-type]

    @property
    def peak(self) -> int:
        return int(self._get("/stats")["peak"])  # type: ignore[call-overload]

    def reset(self) -> None:
        self._get("/reset")

    def __enter__(self) -> ScoringServerProcess:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, trace: TracebackType | None
    ) -> None:
        if self._proc is None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(
        description="a local scoring endpoint; prints host:port, serves until killed"
    )
    parser.add_argument("--delay", type=float, default=0.1)
    args = parser.parse_args()
    with ScoringServer(delay=args.delay) as server:
        print(server.address, flush=True)
        threading.Event().wait()


async def score(address: str, item: str) -> str:
    """Asks the server at `address` (host:port) to score `item`; returns the answer's body."""
    host, _, port = address.rpartition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(f"GET /score?item={quote(item)} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode("ascii"))
        await writer.drain()
        data = await reader.read()
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status = head.split(b" ", 2)[1] if head.count(b" ") >= 2 else b"?"
    if status != b"200":
        raise RuntimeError(f"scoring server answered {status.decode('latin-1')} for {item!r}")
    return body.decode("utf-8")


if __name__ == "__main__":
    main()
