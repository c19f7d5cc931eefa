"""The reward server's guards at the HTTP level: nothing a client sends can hold it.

Bodies over `max_request_bytes` get 413 (refused on their Content-Length when they
declare one), bodies that are not JSON 400. A client must deliver its request headers
within `read_timeout_s` of connecting (or of its last response), and then its body within
`read_timeout_s` (408), or its connection is closed, so slow or stuck clients cannot pin
the server's sockets. Every error answer is also one line on the server's stderr
(`ErrorLog`): clients such as OpenRLHF's drop the body of a failed request.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

from tdrm_cli.errors import UsageError


def http_error(status: int, detail: str):
    """An HTTPException; the app answers it as `{"detail": detail}`."""
    from fastapi import HTTPException

    return HTTPException(status_code=status, detail=detail)


class ErrorLog:
    """One stderr line per error answer, `tdrm serve: 422 POST /get_reward: <detail>`, at
    most one per reason every `every_s` seconds: a client that repeats a bad request (a
    trainer sends the same one every step) cannot flood the log. The next line written for
    a reason counts the ones held back since. A reason is the status, path and detail
    with numbers blanked ('labels[3]' and 'labels[7]' are the same mistake)."""

    MAX_REASONS = 1024  # distinct reasons remembered (a hostile client may send endless ones)

    def __init__(
        self,
        every_s: float = 10.0,
        write: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.every_s, self.clock = every_s, clock
        self.write = write or (lambda line: print(line, file=sys.stderr, flush=True))
        self.last: dict[str, float] = {}  # reason -> when its last line was written
        self.held: dict[str, int] = {}  # reason -> lines held back since then

    def __call__(self, status: int, method: str, path: str, detail: Any) -> None:
        from tdrm_cli.errors import one_line

        line = one_line(f"{status} {method} {path}: {detail}", 500)
        reason = re.sub(r"\d+", "N", line)
        now = self.clock()
        last = self.last.get(reason)
        if last is not None and now - last < self.every_s:
            self.held[reason] = self.held.get(reason, 0) + 1
            return
        held = self.held.pop(reason, 0)
        if held:
            line += f" (and {held} more like it in the last {now - last:.0f}s)"
        if len(self.last) >= self.MAX_REASONS:
            self.forget(now)
        self.last[reason] = now
        self.write(f"tdrm serve: {line}")

    def forget(self, now: float) -> None:
        """Drop the reasons outside their window (all of them when every one is recent)."""
        old = [r for r, t in self.last.items() if now - t >= self.every_s] or list(self.last)
        for reason in old:
            self.last.pop(reason)
            self.held.pop(reason, None)


async def read_json(request: Any, limit: int, timeout_s: float = 30.0) -> Any:
    """The request body as JSON: 413 over `limit` bytes, 408 when it takes longer than
    `timeout_s` to arrive, 400 when it is not JSON (or nests too deep, or holds an integer
    past Python's digit limit)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit() or len(declared) > 20:
            raise http_error(400, f"bad Content-Length header: {declared[:40]!r}")
        if int(declared) > limit:
            raise http_error(
                413, f"request body is {declared} bytes; the limit is {limit} (--max-request-bytes)"
            )

    async def receive() -> bytearray:
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise http_error(413, f"request body exceeds {limit} bytes (--max-request-bytes)")
        return body

    try:
        body = await asyncio.wait_for(receive(), timeout_s)
    except TimeoutError:
        from fastapi import HTTPException

        raise HTTPException(  # the connection is closed: its body is still unread
            408,
            f"request body not received within {timeout_s:g}s (--read-timeout-s)",
            headers={"Connection": "close"},
        ) from None
    try:
        return json.loads(body)
    except UnicodeDecodeError:
        raise http_error(400, "malformed JSON: body is not UTF-8") from None
    except json.JSONDecodeError as e:
        raise http_error(
            400, f"malformed JSON: {e.msg} (line {e.lineno}, column {e.colno})"
        ) from None
    except RecursionError:
        raise http_error(400, "malformed JSON: nested too deep") from None
    except ValueError as e:  # e.g. an integer of more than 4300 digits
        raise http_error(400, f"malformed JSON: {str(e)[:200]}") from None


def bind(host: str, port: int) -> socket.socket:
    """A bound socket for host:port, or a one-line UsageError (port taken, bad host)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as e:
        raise UsageError(
            f"--host {host} --port {port}: cannot listen ({e.strerror or e})"
        ) from None
    sock.set_inheritable(True)
    return sock


def guarded_protocol(read_timeout_s: float):
    """uvicorn's h11 protocol plus a deadline for a request's headers.

    uvicorn times out only idle keep-alive connections, and only after a response: a client
    that connects and sends half its headers (or nothing) holds a socket forever. Here every
    connection must deliver complete request headers within `read_timeout_s` of opening, or
    of its last response, or it is closed. (The body has its own deadline in `read_json`.)
    """
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class GuardedH11Protocol(H11Protocol):
        _deadline: asyncio.TimerHandle | None = None
        _waiting_for = None

        def _arm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
            self._waiting_for = self.cycle  # a new request replaces the cycle
            self._deadline = self.loop.call_later(read_timeout_s, self._expire)

        def _expire(self) -> None:
            if self.cycle is self._waiting_for and not self.transport.is_closing():
                self.transport.close()

        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()

        def connection_lost(self, exc) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
            super().connection_lost(exc)

    return GuardedH11Protocol
