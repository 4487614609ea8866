"""A client that went away before its answer was delivered: how each protocol shows it, and the
one rule for what is then recorded, the same for WSGI, ASGI and Django.

Seen as: the request body ending before its ``Content-Length`` or an ``OSError`` reading it
(WSGI's ``wsgi.input``, Django's request stream), an ``http.disconnect`` message or an
``OSError`` from the server's ``send`` (ASGI), a connection error in flight when the server
closes a WSGI body (a broken pipe writing the answer). Only what the protocol showed counts:
an exception class alone never does (the app's own call to another service may raise
``ConnectionResetError``, and that is a server error).

The rule (:func:`settle`): such a request is recorded with status 499, nginx's "client closed
request", never as the model's 5xx or invalid input. If the client left before the app chose
its status, the model never answered: the request is HTTP-only (like 401, 403, 404, 405). If
it left after a 1xx-3xx status went out (a stream cut short), the model did answer: the
prediction counts, without an error. A 4xx or 5xx the app had already sent stands.
"""
from __future__ import annotations

import sys
from typing import Any

from .contract import CLIENT_CLOSED
from .record import RequestRecord

__all__ = ["client_gone", "settle", "watch_input", "gone_at_close", "declared_length",
           "WatchedInput"]


def client_gone(rec: RequestRecord) -> None:
    """The client is gone: keep the status the app had chosen by then (0: none yet)."""
    if rec.gone_at is None:
        rec.gone_at = rec.status_code


def settle(rec: RequestRecord) -> None:
    """At finish: the status and the model charge of a request whose client went away."""
    answered = rec.gone_at
    if answered is None or answered >= 400:
        return
    if answered == 0:
        rec.is_prediction = False  # the model never answered: HTTP-only
    rec.status_code = CLIENT_CLOSED


def gone_at_close(rec: RequestRecord) -> None:
    """Called as a WSGI server closes the body: a connection error in flight there (the server
    failed to write the answer) that is not the app's own exception means the client left."""
    exc = sys.exc_info()[1]
    if isinstance(exc, ConnectionError) and exc is not rec.exc:
        client_gone(rec)


class WatchedInput:
    """The request body stream, read through: an ``OSError`` or an end before the declared
    length marks the client gone. Everything else is the stream's own."""

    __slots__ = ("left", "rec", "stream")

    def __init__(self, stream: Any, rec: RequestRecord, length: int | None) -> None:
        self.stream = stream
        self.rec = rec
        #: bytes the headers announced and not read yet; None: chunked (the server raises)
        self.left = length

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)

    def _got(self, size: Any, got: int, line: bool = False) -> None:
        left = self.left
        if left is None:
            return
        wanted = left if size is None or size < 0 else min(size, left)
        if got < wanted and not line:
            client_gone(self.rec)
        self.left = left - got

    def read(self, *args: Any, **kwargs: Any) -> bytes:
        try:
            data: bytes = self.stream.read(*args, **kwargs)
        except OSError:
            client_gone(self.rec)
            raise
        self._got(args[0] if args else kwargs.get("size"), len(data))
        return data

    def readline(self, *args: Any, **kwargs: Any) -> bytes:
        try:
            data: bytes = self.stream.readline(*args, **kwargs)
        except OSError:
            client_gone(self.rec)
            raise
        # a line ends at its newline: short only if it ends neither there nor at its size
        self._got(args[0] if args else kwargs.get("size"), len(data), data.endswith(b"\n"))
        return data

    def readinto(self, buffer: Any) -> int:
        try:
            readinto = getattr(self.stream, "readinto", None)
            if readinto is None:
                data = self.stream.read(len(buffer))
                count = len(data)
                buffer[:count] = data
            else:
                count = readinto(buffer) or 0
        except OSError:
            client_gone(self.rec)
            raise
        if count == 0 and len(buffer) and self.left:  # a raw read may be short: only EOF counts
            client_gone(self.rec)
        elif self.left is not None:
            self.left -= count
        return count

    def readlines(self, hint: int = -1) -> list[bytes]:
        lines: list[bytes] = []
        size = 0
        while True:
            line = self.readline()
            if not line:
                return lines
            lines.append(line)
            size += len(line)
            if 0 < hint <= size:
                return lines

    def __iter__(self) -> Any:
        return iter(self.readline, b"")


def declared_length(environ: dict[str, Any]) -> int | None:
    """The body length a request announced; None when it has none (or an unreadable one)."""
    text = environ.get("CONTENT_LENGTH")
    if not text:
        return None
    try:
        length = int(text)
    except ValueError:
        return None
    return length if length > 0 else None


def watch_input(environ: dict[str, Any], rec: RequestRecord) -> None:
    """Read ``wsgi.input`` through :class:`WatchedInput` when the request has a body."""
    length = declared_length(environ)
    if length is None and "chunked" not in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
        return
    stream = environ.get("wsgi.input")
    if stream is not None:
        environ["wsgi.input"] = WatchedInput(stream, rec, length)
