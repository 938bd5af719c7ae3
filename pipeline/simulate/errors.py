"""What failed spans carry, per runtime, as the OpenTelemetry SDKs and instrumentations write it.

A span that raised gets status ERROR, ``error.type`` = the exception's type and an ``exception``
event (``exception.type``, ``exception.message``, ``exception.stacktrace`` in the runtime's own
format). An HTTP span whose only problem is its status code gets ``error.type`` = the code as a
string and no event: an HTTP client does not raise on a 5xx response, the application code that
reads the response does, so that exception is on the caller's SERVER span (its handler's span),
which fails with 500. Exception types are the ones the libraries of each runtime really raise
(JDBC's ``PSQLException``, pgx's ``*pgconn.PgError``, psycopg's ``QueryCanceled``, ...).

Everything here is built once per operation when the model is compiled; the ``ErrorInfo``
objects are shared by every failed span of that operation.

>>> e = db_error("java", "postgresql", "catalog", "SELECT products")
>>> e.error_type, e.exception_type, e.stacktrace.splitlines()[0]
('org.postgresql.util.PSQLException', 'org.postgresql.util.PSQLException', \
'org.postgresql.util.PSQLException: ERROR: canceling statement due to statement timeout')
>>> status_error(404).exception_type, status_error(404).error_type
('', '404')
"""

from __future__ import annotations

import re
import zlib
from functools import cache

from pipeline.simulate.events import ErrorInfo

HTTP_REASONS = {
    400: "Bad Request",
    404: "Not Found",
    409: "Conflict",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}

#: An application bug in a handler (what an ``error_origin`` fault raises by default).
SERVER_BUG: dict[str, tuple[str, str]] = {
    "java": (
        "java.lang.NullPointerException",
        'Cannot invoke "java.math.BigDecimal.add(java.math.BigDecimal)" because "price" is null',
    ),
    "go": ("*errors.errorString", "inconsistent record: missing account id"),
    "python": ("KeyError", "'sku'"),
    "nodejs": ("TypeError", "Cannot read properties of undefined (reading 'id')"),
}
#: A rare transient failure of a handler (the background error rate of normal traffic).
SERVER_TRANSIENT: dict[str, tuple[str, str]] = {
    "java": (
        "java.util.concurrent.RejectedExecutionException",
        "Task rejected from java.util.concurrent.ThreadPoolExecutor[Running, pool size = 200, "
        "active threads = 200, queued tasks = 100]",
    ),
    "go": ("context.deadlineExceededError", "context deadline exceeded"),
    "python": ("TimeoutError", "timed out"),
    "nodejs": ("TimeoutError", "The operation was aborted due to timeout"),
}
#: What a database or cache client raises, by (runtime, db.system).
DB_ERRORS: dict[tuple[str, str], tuple[str, str]] = {
    ("java", "postgresql"): (
        "org.postgresql.util.PSQLException",
        "ERROR: canceling statement due to statement timeout",
    ),
    ("go", "postgresql"): (
        "*pgconn.PgError",
        "ERROR: canceling statement due to statement timeout (SQLSTATE 57014)",
    ),
    ("python", "postgresql"): (
        "psycopg.errors.QueryCanceled",
        "canceling statement due to statement timeout",
    ),
    # node-postgres names its DatabaseError after the protocol message: "error"
    ("nodejs", "postgresql"): ("error", "canceling statement due to statement timeout"),
    ("java", "redis"): (
        "io.lettuce.core.RedisCommandTimeoutException",
        "Command timed out after 1 second(s)",
    ),
    ("go", "redis"): ("*net.OpError", "read tcp 10.42.0.17:52814->10.43.12.9:6379: i/o timeout"),
    ("python", "redis"): (
        "redis.exceptions.ConnectionError",
        "Error while reading from socket: (104, 'Connection reset by peer')",
    ),
    ("nodejs", "redis"): ("Error", "Command timed out"),
}


def _digest(*parts: str) -> int:
    return zlib.crc32("\x00".join(parts).encode())


def _words(operation: str) -> list[str]:
    """``"GET /users/{id}"`` -> ``["get", "users"]`` (path parameters dropped)."""
    return [w.lower() for w in re.findall(r"[A-Za-z]+", re.sub(r"\{[^}]*\}", "", operation))]


def _camel(words: list[str]) -> str:
    return (words[0] + "".join(w.capitalize() for w in words[1:])) if words else "handle"


def stacktrace(
    runtime: str, service: str, operation: str, exc_type: str, message: str, library: str = ""
) -> str:
    """A stack trace in the format the runtime's SDK writes to ``exception.stacktrace``: the
    handler of ``operation`` in ``service``, below ``library``'s frame if the exception comes
    from a client library (a driver), all deterministic."""
    d = _digest(service, operation, exc_type)
    line = 20 + d % 180
    words = _words(operation) or ["handle"]
    pkg = re.sub(r"[^a-z]", "", service.lower()) or "app"
    if runtime == "java":
        cls = "".join(w.capitalize() for w in re.split(r"[^A-Za-z]", service) if w) + "Controller"
        frames = []
        if library == "postgresql":
            frames += [
                "org.postgresql.core.v3.QueryExecutorImpl.receiveErrorResponse"
                "(QueryExecutorImpl.java:2733)",
                "org.postgresql.jdbc.PgPreparedStatement.executeQuery(PgPreparedStatement.java:134)",
                f"com.example.{pkg}.Repository.query(Repository.java:{40 + d % 60})",
            ]
        elif library == "redis":
            frames += [
                "io.lettuce.core.internal.ExceptionFactory.createTimeoutException"
                "(ExceptionFactory.java:59)",
                "io.lettuce.core.internal.Futures.awaitOrCancel(Futures.java:246)",
                f"com.example.{pkg}.Cache.get(Cache.java:{30 + d % 40})",
            ]
        elif library == "http":
            frames += [
                "org.springframework.web.client.DefaultResponseErrorHandler.handleError"
                "(DefaultResponseErrorHandler.java:186)",
                f"com.example.{pkg}.Clients.call(Clients.java:{50 + d % 50})",
            ]
        frames += [
            f"com.example.{pkg}.{cls}.{_camel(words)}({cls}.java:{line})",
            "java.base/jdk.internal.reflect.DirectMethodHandleAccessor.invoke"
            "(DirectMethodHandleAccessor.java:103)",
            "org.springframework.web.servlet.FrameworkServlet.service(FrameworkServlet.java:885)",
            "org.apache.catalina.core.StandardWrapperValve.invoke(StandardWrapperValve.java:166)",
            "java.base/java.lang.Thread.run(Thread.java:1583)",
        ]
        return f"{exc_type}: {message}\n" + "".join(f"\tat {f}\n" for f in frames)
    if runtime == "python":
        func = "_".join(words)
        lines = [
            "Traceback (most recent call last):",
            '  File "/usr/local/lib/python3.12/site-packages/flask/app.py", line 880, in '
            "full_dispatch_request",
            "    rv = self.dispatch_request()",
            f'  File "/app/{pkg}/views.py", line {line}, in {func}',
        ]
        if library == "redis":
            lines += [
                f"    items = cache.{words[-1]}(key)",
                '  File "/usr/local/lib/python3.12/site-packages/redis/connection.py", line 596, '
                "in read_response",
                "    response = self._parser.read_response(disable_decoding=disable_decoding)",
            ]
        elif library == "postgresql":
            lines += [
                "    rows = cur.execute(QUERY, params).fetchall()",
                '  File "/usr/local/lib/python3.12/site-packages/psycopg/cursor.py", line 97, '
                "in execute",
                "    raise ex.with_traceback(None)",
            ]
        elif library == "http":
            lines += [
                "    resp.raise_for_status()",
                '  File "/usr/local/lib/python3.12/site-packages/requests/models.py", line 1024, '
                "in raise_for_status",
                "    raise HTTPError(http_error_msg, response=self)",
            ]
        else:
            lines.append(f"    return render({words[-1]}[key])")
        lines.append(f"{exc_type}: {message}")
        return "\n".join(lines) + "\n"
    if runtime == "go":
        func = "".join(w.capitalize() for w in words)
        frames = [
            ("runtime/debug.Stack()", "/usr/local/go/src/runtime/debug/stack.go:26 +0x5e"),
            (
                "go.opentelemetry.io/otel/sdk/trace.recordStackTrace(...)",
                "/go/pkg/mod/go.opentelemetry.io/otel/sdk@v1.32.0/trace/span.go:504",
            ),
            (
                "go.opentelemetry.io/otel/sdk/trace.(*recordingSpan).RecordError(0xc0003a2780, "
                "{0x1a2b3c0, 0xc000412a80}, {0xc0004b6f60, 0x1, 0x1})",
                "/go/pkg/mod/go.opentelemetry.io/otel/sdk@v1.32.0/trace/span.go:479 +0x3a5",
            ),
            (
                f"main.(*server).{func}(0xc00012e0f0, {{0x1a5f7d0, 0xc0004c2000}}, 0xc000414360)",
                f"/src/{pkg}/handlers.go:{line} +0x{d % 0x400:x}",
            ),
            (
                "net/http.HandlerFunc.ServeHTTP(0xc000126a50?, {0x1a5f7d0?, 0xc0004c2000?}, "
                "0x10?)",
                "/usr/local/go/src/net/http/server.go:2220 +0x29",
            ),
        ]
        return f"goroutine {17 + d % 900} [running]:\n" + "".join(
            f"{fn}\n\t{loc}\n" for fn, loc in frames
        )
    # nodejs
    func = _camel(words)
    frames = [f"{func} (/app/src/routes/{words[-1]}.js:{line}:{5 + d % 30})"]
    if library == "http":
        frames.insert(0, "settle (/app/node_modules/axios/lib/core/settle.js:19:12)")
    elif library == "redis":
        frames.insert(0, "Timeout._onTimeout (/app/node_modules/ioredis/built/Command.js:192:33)")
    elif library == "postgresql":
        frames.insert(0, "Parser.parseErrorMessage (/app/node_modules/pg-protocol/dist/parser.js"
                      ":287:98)")
    frames += [
        "Layer.handle [as handle_request] (/app/node_modules/express/lib/router/layer.js:95:5)",
        "process.processTicksAndRejections (node:internal/process/task_queues:95:5)",
    ]
    return f"{exc_type}: {message}\n" + "".join(f"    at {f}\n" for f in frames)


def exception(
    runtime: str, service: str, operation: str, exc_type: str, message: str, library: str = ""
) -> ErrorInfo:
    """An exception raised on a span: ``error.type`` is its type."""
    return ErrorInfo(
        exc_type,
        exc_type,
        message,
        stacktrace(runtime, service, operation, exc_type, message, library),
    )


def server_error(
    runtime: str, service: str, operation: str, transient: bool = False,
    exc_type: str = "", message: str = "",
) -> ErrorInfo:
    """A handler's own failure: a bug by default, a transient one for the background rate;
    ``exc_type`` / ``message`` override the runtime's default."""
    default = (SERVER_TRANSIENT if transient else SERVER_BUG)[runtime]
    return exception(runtime, service, operation, exc_type or default[0], message or default[1])


def db_error(
    runtime: str, system: str, service: str, operation: str,
    exc_type: str = "", message: str = "",
) -> ErrorInfo:
    """What a database or cache client of ``runtime`` raises (``DB_ERRORS``)."""
    default = DB_ERRORS.get((runtime, system), ("Exception", "query failed"))
    return exception(
        runtime, service, operation, exc_type or default[0], message or default[1], system
    )


def http_error(runtime: str, service: str, operation: str, method: str, url: str,
               code: int) -> ErrorInfo:
    """What the caller's code raises on reading an error response (HTTP ``code``) from ``url``:
    Spring's ``HttpServerErrorException``, ``requests``' ``HTTPError``, an ``AxiosError`` or a
    wrapped Go error. Recorded on the caller's SERVER span (``operation`` is its handler)."""
    reason = HTTP_REASONS.get(code, "Error")
    if runtime == "java":
        name = "".join(w.capitalize() for w in reason.split())
        kind = "HttpServerErrorException" if code >= 500 else "HttpClientErrorException"
        exc_type = f"org.springframework.web.client.{kind}${name}"
        message = f'{code} {reason} on {method} request for "{url}": [no body]'
    elif runtime == "python":
        exc_type = "requests.exceptions.HTTPError"
        side = "Server" if code >= 500 else "Client"
        message = f"{code} {side} Error: {reason} for url: {url}"
    elif runtime == "nodejs":
        exc_type, message = "AxiosError", f"Request failed with status code {code}"
    else:
        exc_type = "*fmt.wrapError"
        message = f"{method} {url}: unexpected status {code} {reason}"
    return exception(runtime, service, operation, exc_type, message, "http")


@cache
def status_error(code: int) -> ErrorInfo:
    """An HTTP span failed by its status code only: ``error.type`` = the code, no exception."""
    return ErrorInfo(str(code))
