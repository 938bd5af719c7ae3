"""Command line: ``python -m pipeline <command>``; each command has ``--help``.

    worker     run a Faust worker (ingest + detection); scale out by starting more
    simulate   write simulated OTLP traffic with labelled faults to Kafka
    tail       print findings (or dead letters) as they arrive
    analyze    run the detectors over a time range (Kafka or files) and print a report
    feedback   mute, ack, confirm or reject findings (the feedback topic); list the words
    config     print the effective configuration (environment + defaults), secrets masked

`python -m pipeline worker --help` lists every setting with its default.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any

from pipeline.settings import ConfigError, Settings


def _settings(args: argparse.Namespace, **extra: Any) -> Settings:
    try:
        return Settings.from_env(
            kafka_bootstrap_servers=getattr(args, "bootstrap", None), **extra
        )
    except ConfigError as exc:
        sys.exit(f"configuration error: {exc}")


def cmd_worker(args: argparse.Namespace) -> None:
    settings = _settings(
        args, metrics_port=args.metrics_port, pipeline_data_dir=args.data_dir,
        log_level=args.loglevel,
    )
    import faust
    from prometheus_client import disable_created_metrics, start_http_server

    # Each counter's and histogram's creation time as a series of its own (26 of them) tells an
    # operator nothing Prometheus does not already know; scrapes stay smaller without them.
    disable_created_metrics()

    from pipeline import datadir
    from pipeline.app import Pipeline
    from pipeline.topics import ensure_topics, partition_counts

    # Before Faust joins its group: a routed topic created after that would never be read.
    try:
        asyncio.run(ensure_topics(settings))
        inputs = asyncio.run(partition_counts(settings))
    except ConfigError as exc:
        sys.exit(f"configuration error: {exc}")
    except Exception as exc:  # noqa: BLE001 - a clear message instead of a traceback
        sys.exit(f"cannot create the pipeline's topics on {settings.kafka_bootstrap_servers}: "
                 f"{exc!r} (is Kafka up? `make kafka-up`)")
    pipeline = Pipeline(settings)
    # Known before any engine opens (the detection stage's expected sources depend on it).
    pipeline.ingest.input_partitions.update(inputs)
    if settings.metrics_port:
        try:
            start_http_server(settings.metrics_port, addr=settings.metrics_host)
        except OSError as exc:
            sys.exit(
                f"cannot serve metrics on {settings.metrics_host}:{settings.metrics_port}: {exc} "
                "(set METRICS_PORT or --metrics-port to a free port; each worker needs its own)"
            )
        print(
            f"metrics: http://{settings.metrics_host}:{settings.metrics_port}/metrics",
            flush=True,
        )
    # Faust and aiokafka are chatty at info; keep our own logger at the chosen level.
    worker = faust.Worker(pipeline.app, loglevel=settings.log_level.upper(), quiet=True)
    for name in ("faust", "aiokafka", "mode"):
        logging.getLogger(name).setLevel(max(logging.WARNING, _level(settings.log_level)))
    logging.getLogger("pipeline").setLevel(_level(settings.log_level))
    logging.getLogger("faust.transport.producer").addFilter(_EveryMinute("producer buffer full"))
    tabledir = pipeline.app.conf.tabledir
    try:
        lock = datadir.lock_tables(tabledir)  # held until the process ends
    except datadir.DataDirInUse as exc:
        sys.exit(f"configuration error: {exc}")
    claimed = datadir.claim_tables(tabledir)
    if claimed == "discarded":
        logging.getLogger("pipeline").warning(
            "the last run on %s did not stop cleanly: its local state tables may hold writes "
            "the changelog never got, so they were removed and are restored from the "
            "changelog", tabledir)
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        if exc.code in (0, None) and _changelog_flushed(pipeline.app):
            datadir.mark_clean(tabledir)
        raise
    finally:
        lock.close()


def _changelog_flushed(app: Any) -> bool:
    """Whether Faust's producer buffer ended empty: every changelog write was handed to the
    Kafka client, whose stop waits for its sends. A status of 0 alone does not say so: Faust's
    flush on stop gives up when a send takes over 0.1 s, the error of the flush after it is
    only logged, and an agent still in a message when the worker stops can write its table
    after the flush (``stream_wait_empty=False``); each of those leaves messages queued."""
    try:
        left = app.producer.buffer.size
    except Exception:  # noqa: BLE001 - unknown: not clean
        return False
    if left:
        logging.getLogger("pipeline").warning(
            "%d changelog writes were still queued at exit: the local tables are not marked "
            "clean, and the next start restores them from the changelog", left)
    return left == 0


class _EveryMinute(logging.Filter):
    """Let one record starting with ``prefix`` through per minute, saying how many were held.

    Faust warns "producer buffer full" before every routed message delivered while its
    producer queue is over its limit (Faust's 100; the pipeline raises it, see
    ``app.CHANGELOG_BUFFER_HIGH``, so this is a last resort), which would flood the log."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix, self.last, self.held = prefix, 0.0, 0

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith(self.prefix):
            return True
        now = time.monotonic()
        if now - self.last < 60:
            self.held += 1
            return False
        if self.held:
            record.msg = f"{record.msg} ({self.held} more in the last minute: backpressure)"
        self.last, self.held = now, 0
        return True


def _level(name: str) -> int:
    return getattr(logging, name.upper(), logging.INFO)


def cmd_workers(args: argparse.Namespace) -> None:
    from pipeline import workers

    _settings(args)  # a bad setting is said once, before any worker starts
    sys.exit(workers.main(args.count))


def cmd_simulate(args: argparse.Namespace) -> None:
    from pipeline import simulate
    from pipeline.simulate.cli import bootstrap_of

    _run_kafka_client("simulate", bootstrap_of(args), lambda: simulate.run(args),
                      interrupted="simulate: interrupted" + (
                          "" if args.dry_run or args.list_scenarios
                          else "; the records sent so far stay in Kafka"))


def cmd_tail(args: argparse.Namespace) -> None:
    from pipeline.tail import tail

    if args.time_order and not args.from_beginning:
        sys.exit("tail: --time-order sorts what the topic already holds: use it with "
                 "--from-beginning")
    settings = _settings(args)
    _run_kafka_client("tail", settings.kafka_bootstrap_servers, lambda: tail(settings, args))


def _run_kafka_client(tool: str, bootstrap: str, main: Callable[[], Coroutine[Any, Any, None]],
                      interrupted: str | None = None) -> None:
    """Run a command that talks to Kafka with plain aiokafka clients. A broker that cannot be
    reached, or any other Kafka error, is one line on stderr and exit status 1, not the
    client's traceback and its log lines; Ctrl-C stops it quietly (``interrupted``: a line to
    say first, and exit status 130)."""
    from aiokafka.errors import KafkaConnectionError, KafkaError

    # aiokafka logs each failed connection at ERROR through Python's last-resort handler
    # (stderr); the one line below says it once.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        if interrupted:
            print(interrupted, file=sys.stderr, flush=True)
            sys.exit(130)
    except (KafkaConnectionError, ConnectionError) as exc:
        sys.exit(f"{tool}: cannot reach Kafka at {bootstrap} ({type(exc).__name__}): is it up? "
                 "(`make kafka-up`, or set KAFKA_BOOTSTRAP_SERVERS / --bootstrap)")
    except KafkaError as exc:
        sys.exit(f"{tool}: Kafka at {bootstrap}: {type(exc).__name__}: {exc}")


def cmd_config(args: argparse.Namespace) -> None:
    """Print the effective configuration, as a worker started here would read it."""
    import orjson

    from pipeline.settings import effective

    rows = effective(_settings(args))
    if args.json:
        print(orjson.dumps({name: value for name, value, _ in rows},
                           option=orjson.OPT_INDENT_2).decode())
        return
    for name, value, default in rows:
        if default and args.changed:
            continue
        print(f"{name}={value}")


def cmd_analyze(args: argparse.Namespace) -> None:
    from pipeline.analyze.cli import main as analyze

    sys.exit(analyze(args))


def cmd_feedback(args: argparse.Namespace) -> None:
    from pipeline.feedback_cli import main as feedback

    sys.exit(feedback(args))


def _relative_times(argv: list[str]) -> list[str]:
    """``--from -2h`` as ``--from=-2h``: argparse takes a value that starts with "-" for an
    option, and the relative times the help offers do.

    >>> _relative_times(["analyze", "--from", "-2h", "--to", "-30m", "--json"])
    ['analyze', '--from=-2h', '--to=-30m', '--json']
    """
    out: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        nxt = argv[i + 1] if i + 1 < len(argv) else ""
        if a in ("--from", "--to", "--since") and nxt[:2].startswith("-") and nxt[1:2].isdigit():
            out.append(f"{a}={nxt}")
            i += 2
            continue
        out.append(a)
        i += 1
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    argv = sys.argv[1:] if argv is None else argv
    # Every setting, its default and what it does, in the help of the commands that read them
    # all (built only for those: it reads the settings module's source).
    settings_epilog = None
    if argv[:1] in (["worker"], ["workers"]):
        from pipeline.settings import settings_help

        settings_epilog = settings_help()
    p = sub.add_parser("worker", help="run a Faust worker (ingest + detection)",
                       description="Run a Faust worker (ingest + detection). Every setting is "
                       "an environment variable,\nlisted below with its default; `python -m "
                       "pipeline config` prints the values in effect here.",
                       epilog=settings_epilog,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bootstrap", help="Kafka bootstrap servers (env KAFKA_BOOTSTRAP_SERVERS)")
    p.add_argument("--metrics-port", type=int, help="Prometheus port (env METRICS_PORT; 0: off)")
    p.add_argument("--data-dir", help="local table store directory (env PIPELINE_DATA_DIR)")
    p.add_argument("--loglevel", help="debug, info, warning, error (env LOG_LEVEL)")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("workers", help="run one worker per core on this host (each its own "
                       "METRICS_PORT + i and PIPELINE_DATA_DIR/worker-<i>)",
                       epilog=settings_epilog,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--count", type=int, help="workers to run (default: the usable cores)")
    p.set_defaults(func=cmd_workers)

    p = sub.add_parser("simulate", help="write simulated OTLP traffic with labelled faults")
    if argv[:1] == ["simulate"]:  # the worker never imports the simulator
        from pipeline import simulate

        simulate.add_arguments(p)
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("tail", help="print findings (or dead letters) as they arrive")
    p.add_argument("--bootstrap", help="Kafka bootstrap servers (env KAFKA_BOOTSTRAP_SERVERS)")
    p.add_argument("--deadletters", action="store_true", help="tail the dead-letter topic")
    p.add_argument("--incidents", action="store_true",
                   help="also print incidents (INCIDENTS_TOPIC) of two or more findings "
                   "grouped by cause")
    p.add_argument("--from-beginning", action="store_true", help="start at the earliest offset")
    p.add_argument("--time-order", action="store_true",
                   help="with --from-beginning: print what the topic holds in event-time order "
                   "(when each finding was detected or resolved) rather than partition by "
                   "partition, then follow new records as they come")
    p.add_argument("--json", action="store_true", help="print raw JSON lines (stdout holds "
                   "only them: the banner and status lines go to stderr)")
    p.add_argument("--max", type=int, default=0, help="stop after this many records")
    p.add_argument("--timeout", type=float, default=0, help="stop after this many idle seconds")
    p.add_argument("--metrics-url", help="also print a worker's health line from this /metrics")
    p.add_argument("--status-every", type=float, default=15.0, help="seconds between them")
    p.set_defaults(func=cmd_tail)

    p = sub.add_parser("analyze", help="run the detectors over a time range of the input "
                       "topics or of Collector files, and print a report",
                       description="Run the detectors over a time range and print a report: "
                       "the slowest operations, where failures start, the dependency map, and "
                       "the findings. Read-only: commits no offsets, writes nothing.")
    if argv[:1] == ["analyze"]:  # (the worker does not import it either)
        from pipeline.analyze.cli import add_arguments as analyze_arguments

        analyze_arguments(p)
        argv = _relative_times(argv)
    p.set_defaults(func=cmd_analyze)

    p = sub.add_parser("feedback", help="mute, ack, confirm or reject findings; list the words",
                       description="Write feedback about findings to the compacted feedback "
                       "topic (FEEDBACK_TOPIC), which every worker follows: a muted finding is "
                       "still published, with muted: true, and not alerted; ack shows who is "
                       "on it; confirm / reject label it for the accuracy benchmark. Alertmanager "
                       "silences stay the way to silence alerts' notifications.")
    if argv[:1] == ["feedback"]:
        from pipeline.feedback_cli import add_arguments as feedback_arguments

        feedback_arguments(p)
    p.set_defaults(func=cmd_feedback)

    p = sub.add_parser("config", help="print the effective configuration, secrets masked",
                       description="Print every setting as NAME=value, as a worker started "
                       "with this environment would read it (defaults included; secrets such "
                       "as KAFKA_SASL_PASSWORD show as *** when set). An invalid configuration "
                       "is reported as the worker would report it. `python -m pipeline worker "
                       "--help` says what each setting does.")
    p.add_argument("--changed", action="store_true",
                   help="only the settings that differ from their defaults")
    p.add_argument("--json", action="store_true", help="one JSON object instead")
    p.set_defaults(func=cmd_config)

    args = parser.parse_args(argv)
    if args.command == "worker":
        # Faust's worker parses sys.argv itself; hand it only the program name.
        sys.argv = [sys.argv[0]]
    args.func(args)


if __name__ == "__main__":
    main()
