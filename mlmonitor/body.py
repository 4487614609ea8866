"""The response body, wrapped: the request is finished when the server closes it.

Runs in every request, from the app's return to ``close()``. A buffered body (a list)
only needs the close; a streamed one (a generator) runs app code while it is iterated,
so each chunk and the close run in the request's context: ``observe`` / ``stage`` /
``tag`` there count, and stage spans are children of the server span.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any
from collections.abc import Iterable, Iterator

from opentelemetry import context as otel_context
from opentelemetry import trace

from . import guard
from .disconnect import gone_at_close
from .record import RECORD_VAR, RequestRecord

if TYPE_CHECKING:  # the WSGI adapter imports this module and the engine
    from .engine import Recorder

__all__ = ["MonitoredBody", "StreamedBody"]


class MonitoredBody:
    """The app's body iterable; finishing the record when the server closes it."""

    __slots__ = ("body", "rec", "recorder")

    def __init__(self, body: Iterable[bytes], rec: RequestRecord, recorder: Recorder) -> None:
        self.body = body
        self.rec = rec
        self.recorder = recorder

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self.body
        except Exception as exc:
            self.rec.exc = exc
            raise

    def close(self) -> None:
        gone_at_close(self.rec)  # before the app's close() can handle an exception of its own
        try:
            close = getattr(self.body, "close", None)
            if close is not None:
                close()
        finally:
            self.recorder.finish(self.rec)


_END: Any = object()  # next()'s default; Any, so a chunk after the check stays bytes
_perf = time.perf_counter


class StreamedBody(MonitoredBody):
    """A body whose iteration runs app code (a generator): each chunk and the close run in
    the request's context, so observe/stage/tag there count and stage spans are children of
    the server span. Set before and reset after each step, in the server's own context: its
    thread is left clean between chunks."""

    __slots__ = ("otel",)

    def __init__(self, body: Iterable[bytes], rec: RequestRecord, recorder: Recorder) -> None:
        self.body = body
        self.rec = rec
        self.recorder = recorder
        self.otel: Any = None
        if rec.span is not None:
            try:  # every traced request with a streamed body (Flask's): a try, not guarded()
                self.otel = trace.set_span_in_context(rec.span)
            except Exception as exc:
                guard.report_fault("traces", exc, recorder)

    def __iter__(self) -> Iterator[bytes]:
        # a generator runs in its caller's context: all is reset before each yield
        rec = self.rec
        otel = self.otel
        iterator = None
        while True:
            otel_token = self._attach() if otel is not None else None
            record_token = RECORD_VAR.set(rec)
            try:
                if iterator is None:
                    iterator = iter(self.body)
                chunk = next(iterator, _END)  # no StopIteration raised through this frame
            except Exception as exc:
                rec.exc = exc
                raise
            finally:
                RECORD_VAR.reset(record_token)
                if otel_token is not None:
                    otel_context.detach(otel_token)  # logs, never raises, on a foreign token
            if chunk is _END:
                return
            if chunk and rec.first_chunk is None:
                rec.first_chunk = _perf() - rec.start
            yield chunk

    def close(self) -> None:
        gone_at_close(self.rec)
        otel_token = self._attach() if self.otel is not None else None
        record_token = RECORD_VAR.set(self.rec)
        try:
            close = getattr(self.body, "close", None)
            if close is not None:
                close()
        finally:
            RECORD_VAR.reset(record_token)
            if otel_token is not None:
                otel_context.detach(otel_token)
            self.recorder.finish(self.rec)

    def _attach(self) -> Any:
        try:
            return otel_context.attach(self.otel)
        except Exception as exc:
            guard.report_fault("traces", exc, self.recorder)
            return None
