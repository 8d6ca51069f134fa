"""OpenTelemetry traces, optional (``pip install 'chatq[otel]'``): one trace per job, from its
submission through its wait in the session's queue, its worker's run, each provider call and each
tool call. This module is the base's half: whether tracing is on, the producer's span, and the
job's W3C ``traceparent``, which travels in the job record (``Job.traceparent``) so the worker that
runs the job -- whichever process, whenever, however the session reached it -- continues the trace.

**Off unless configured**, by the standard variables: an exporter named in ``OTEL_TRACES_EXPORTER``
(``console``, ``otlp``, or any installed under the SDK's ``opentelemetry_traces_exporter`` entry
points), or an OTLP endpoint (``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``..._TRACES_ENDPOINT``, which
means ``otlp``); ``OTEL_SDK_DISABLED=true`` turns them off. chatq then installs the SDK's tracer
provider (service name ``OTEL_SERVICE_NAME``, else the process's role: ``chatq-worker``, ``chatq-api``,
``chatq-client``; sampler ``OTEL_TRACES_SAMPLER``; batch export tuned by ``OTEL_BSP_*``), unless the
application installed one already, which it uses. An application that configured OpenTelemetry in
code (or runs under ``opentelemetry-instrument``) gets chatq's spans in its own traces without any
variable (``use`` hands chatq a provider without installing it globally).

Otherwise chatq never imports ``opentelemetry`` (its dependencies may: FastAPI's own telemetry
imports the API, redis-py the SDK's metrics when installed): every hook is one call returning a
shared no-op context, so tracing off costs a producer or a worker nothing it could measure.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.trace import Span, Tracer

    from .models import Job

log = logging.getLogger(__name__)

NAME = "chatq"
"""The instrumentation scope of every chatq span."""
OFF: AbstractContextManager[None] = nullcontext()
"""What a hook returns with tracing off: reusable, it enters to None and does nothing."""
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)

_lock = threading.Lock()
_configured = False
_tracer: Tracer | None = None
_provider: Any = None  # the tracer provider _tracer comes from
_next_look = 0.0  # when tracer() may next look for the application's own tracer provider
ADOPT_EVERY = 2.0


def wanted(environ: Mapping[str, str] = os.environ) -> list[str]:
    """The exporters the ``OTEL_*`` variables ask for (empty: traces off). An OTLP endpoint alone
    means ``otlp``, the specification's default exporter."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    names = environ.get("OTEL_TRACES_EXPORTER", "").strip()
    if not names:
        endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        return ["otlp"] if endpoint else []
    return [n.strip() for n in names.split(",") if n.strip() and n.strip().lower() != "none"]


def configure(role: str = "client", environ: Mapping[str, str] = os.environ) -> Tracer | None:
    """Turn tracing on for this process if the ``OTEL_*`` variables ask for it; once per process
    (later calls return what the first decided). ``role`` names the service when
    ``OTEL_SERVICE_NAME`` does not: ``chatq-<role>``. Never raises: a broken configuration logs why
    and leaves tracing off."""
    global _configured
    with _lock:
        if _configured:
            return _tracer
        _configured = True
        exporters = wanted(environ)
        if not exporters:
            return None
        try:
            from opentelemetry import trace
        except ImportError:
            log.warning("OpenTelemetry variables are set (OTEL_TRACES_EXPORTER or an OTLP endpoint) but "
                        "opentelemetry is not installed: traces are off (pip install 'chatq[otel]')")
            return None
        try:
            provider = trace.get_tracer_provider()
            if isinstance(provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider)):
                provider = _sdk_provider(role, exporters, environ)
                trace.set_tracer_provider(provider)
        except ImportError as exc:  # the API comes with FastAPI; the SDK only with the extra
            log.warning("traces are off: %s (pip install 'chatq[otel]')", exc)
            return None
        except Exception as exc:  # a missing exporter package, a bad protocol: tell, and stay off
            log.warning("traces are off: %s", exc)
            return None
        _set(provider)
        log.info("OpenTelemetry traces on (%s)", ", ".join(exporters))
        return _tracer


def use(provider: Any) -> None:
    """Send chatq's spans to this tracer provider (the application's own, without installing it
    globally; a test's in-memory one); ``None`` goes back to what the ``OTEL_*`` variables decide."""
    global _configured
    with _lock:
        _set(provider)
        _configured = provider is not None


def _set(provider: Any) -> None:
    global _tracer, _provider
    _provider, _tracer = provider, provider.get_tracer(NAME) if provider is not None else None


def _sdk_provider(role: str, exporters: list[str], environ: Mapping[str, str]) -> Any:
    """The SDK's tracer provider with a batch processor per exporter, as the ``OTEL_*`` variables say."""
    from importlib.metadata import entry_points

    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: f"chatq-{role}"}))
    provider = TracerProvider(resource=resource)
    for name in exporters:
        entry = _exporter_entry(name, environ)
        found = entry_points(group="opentelemetry_traces_exporter", name=entry)
        if not found:
            hint = " (pip install opentelemetry-exporter-otlp-proto-grpc)" if entry == "otlp_proto_grpc" else ""
            raise RuntimeError(f"no trace exporter named {name!r} is installed{hint}")
        provider.add_span_processor(BatchSpanProcessor(next(iter(found)).load()()))
    return provider


def _exporter_entry(name: str, environ: Mapping[str, str]) -> str:
    """``otlp`` by its protocol (``OTEL_EXPORTER_OTLP[_TRACES]_PROTOCOL``): ``grpc``, else
    ``http/protobuf`` -- the specification's default, and the exporter ``chatq[otel]`` installs."""
    if name != "otlp":
        return name
    protocol = (environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
                or "http/protobuf").strip()
    if protocol not in ("grpc", "http/protobuf"):
        raise RuntimeError(f"unsupported OTLP protocol {protocol!r} (grpc or http/protobuf)")
    return "otlp_proto_grpc" if protocol == "grpc" else "otlp_proto_http"


def tracer() -> Tracer | None:
    """chatq's tracer, or None when tracing is off: the one question every hook asks first.

    Off by the variables, it is still on if the application installed a tracer provider of its own
    since: looked for at most every ``ADOPT_EVERY`` seconds, once something imported
    ``opentelemetry.trace`` (redis-py does, when the SDK is installed); the look costs microseconds,
    which a hook must not pay on every call.
    """
    global _next_look
    t = _tracer
    if t is not None:
        return t
    if not _configured:
        return configure()
    if "opentelemetry.trace" in sys.modules and (now := time.monotonic()) >= _next_look:
        _next_look = now + ADOPT_EVERY
        return _adopt()
    return None


def _adopt() -> Tracer | None:
    """The application's own tracer provider, if it installed one: chatq's spans join its traces.
    Read from the module already imported, never importing it."""
    trace = sys.modules["opentelemetry.trace"]
    provider = trace.get_tracer_provider()
    if isinstance(provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider)):
        return None
    with _lock:
        _set(provider)
    return _tracer


def flush(timeout_s: float = 5.0) -> None:
    """Export the spans still buffered (a worker shutting down); nothing when tracing is off."""
    force_flush = getattr(_provider, "force_flush", None)
    if force_flush is not None:
        force_flush(int(timeout_s * 1000))


def job_attributes(job: Job) -> dict[str, Any]:
    """What every span of a job carries, so a backend finds a job's or a session's spans by ID."""
    return {"chatq.job_id": job.job_id, "chatq.session_id": job.session_id, "chatq.agent": job.agent}


def submitting(job: Job) -> AbstractContextManager[Any]:
    """Around a job's submission (``ChatClient`` writing it behind its session's earlier ones): the
    ``chatq.submit`` span, a producer span child of whatever span is current (an HTTP request's), whose
    context is stored in the job as ``traceparent`` before the job is written."""
    t = tracer()
    return OFF if t is None else _submit_span(t, job)


@contextmanager
def _submit_span(t: Tracer, job: Job) -> Iterator[Span]:
    from opentelemetry.trace import SpanKind

    with t.start_as_current_span("chatq.submit", kind=SpanKind.PRODUCER, attributes=job_attributes(job)) as span:
        job.traceparent = traceparent(span)
        yield span


def serving(name: str, headers: Mapping[str, str], attributes: Mapping[str, Any]) -> AbstractContextManager[Any]:
    """Around an HTTP request that submits jobs: a server span named ``name`` continuing the
    caller's trace (its ``traceparent`` header), unless the request is traced already -- FastAPI's
    own telemetry traces every request once a global tracer provider is installed, as ``configure``
    does -- in which case the submission's span is simply a child of the request's."""
    t = tracer()
    return OFF if t is None else _server_span(t, name, headers, attributes)


@contextmanager
def _server_span(t: Tracer, name: str, headers: Mapping[str, str],
                 attributes: Mapping[str, Any]) -> Iterator[Span | None]:
    from opentelemetry import propagate, trace

    if trace.get_current_span().get_span_context().is_valid:
        yield None
        return
    with t.start_as_current_span(name, context=propagate.extract(headers), kind=trace.SpanKind.SERVER,
                                 attributes=dict(attributes)) as span:
        yield span


def traceparent(span: Span) -> str | None:
    """The span's context as a W3C ``traceparent`` (None for a span that is not sampled in: its
    context is all zeros)."""
    from opentelemetry.trace import format_span_id, format_trace_id

    ctx = span.get_span_context()
    if not ctx.is_valid:
        return None
    return f"00-{format_trace_id(ctx.trace_id)}-{format_span_id(ctx.span_id)}-{int(ctx.trace_flags):02x}"


def parent(value: str | None) -> Context | None:
    """The context a job's ``traceparent`` names, to parent the worker's spans; None when the job
    has none (submitted with tracing off) or it does not parse: the worker's spans start a trace."""
    if not value:
        return None
    from opentelemetry.trace import get_current_span
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    context = TraceContextTextMapPropagator().extract({"traceparent": value})
    return context if get_current_span(context).get_span_context().is_valid else None


def nanos(when: datetime) -> int:
    """An aware datetime as OpenTelemetry's nanoseconds since the epoch, exactly."""
    return (when - _EPOCH) // timedelta(microseconds=1) * 1000
