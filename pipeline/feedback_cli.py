"""``python -m pipeline feedback``: write feedback words about findings to the feedback topic,
or list the current ones. See ``pipeline.feedback`` for what each word does."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import os
import sys
import time
from typing import Any

import orjson

from pipeline.durations import parse_duration_ns
from pipeline.feedback import FeedbackError, FeedbackState, Target, Word, make_word, parse_time
from pipeline.findings import rfc3339
from pipeline.settings import ConfigError, Settings

TARGET_HELP = "what the word is about: --fingerprint, or --entity key=glob ... [--kind]"


def _default_by() -> str:
    try:
        return os.environ.get("USER") or getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name known
        return ""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bootstrap", help="Kafka bootstrap servers (env KAFKA_BOOTSTRAP_SERVERS)")
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")

    def target(q: argparse.ArgumentParser, with_id: bool) -> None:
        g = q.add_argument_group("target", TARGET_HELP)
        g.add_argument("--fingerprint", help="a finding's fingerprint (its key on the findings "
                       "topic, and the fingerprint label of its alert)")
        g.add_argument("--entity", action="append", default=[], metavar="KEY=GLOB",
                       help="an entity pattern, e.g. service=cart or host='node-*' (repeat for "
                       "several keys: all must match)")
        g.add_argument("--kind", help="with --entity: only findings of this kind (a glob)")
        if with_id:
            g.add_argument("--id", help="one occurrence of the finding (its id), not every "
                           "occurrence of its fingerprint")

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument("--reason", default="", help="why (shown to whoever reads it)")
        q.add_argument("--by", default=_default_by(), help="who (default: $USER)")

    q = sub.add_parser("mute", help="mute findings until a time: still published, with "
                       "muted: true, and not alerted")
    target(q, with_id=False)
    when = q.add_mutually_exclusive_group(required=True)
    when.add_argument("--for", dest="duration", help="how long: 30m, 2h, 1d (from now)")
    when.add_argument("--until", help="until this time (RFC 3339, e.g. 2026-01-05T18:00:00Z)")
    common(q)
    q = sub.add_parser("unmute", help="remove a mute (the same target as the mute)")
    target(q, with_id=False)
    for action, text in (("ack", "acknowledge: someone is on it (shown on the findings)"),
                         ("confirm", "label as a real problem (read by the accuracy benchmark)"),
                         ("reject", "label as a false alarm (read by the accuracy benchmark)")):
        q = sub.add_parser(action, help=text)
        target(q, with_id=True)
        common(q)
    q = sub.add_parser("clear", help="remove an ack or a label (confirm / reject)")
    q.add_argument("slot", choices=("ack", "label"), help="what to remove")
    target(q, with_id=True)
    q = sub.add_parser("list", help="print the current words on the feedback topic")
    q.add_argument("--json", action="store_true", help="one JSON object per line")


def build_target(args: argparse.Namespace) -> Target:
    entity: dict[str, str] = {}
    for item in args.entity:
        key, eq, glob = item.partition("=")
        if not eq or not key or not glob:
            raise FeedbackError("invalid_record", f"--entity {item!r}: write KEY=GLOB, "
                                "e.g. service=cart")
        entity[key] = glob
    fid = getattr(args, "id", None)
    if (args.fingerprint or fid) and (entity or args.kind):
        raise FeedbackError("invalid_record", "give --fingerprint/--id or --entity, not both")
    if args.kind and not entity:
        raise FeedbackError("invalid_record", "--kind narrows an --entity pattern: add --entity")
    fp, fid = (v.strip().lower() if v else None for v in (args.fingerprint, fid))
    doc: dict[str, Any] = ({"fingerprint": fp, "id": fid} if fp
                           or fid else {"entity": entity, "kind": args.kind})
    return Target.from_dict({k: v for k, v in doc.items() if v is not None})


def build(args: argparse.Namespace, now_ns: int) -> tuple[str, Word | None]:
    """The record key and word (None: a tombstone) the command writes."""
    target = build_target(args)
    if args.action == "unmute":
        return f"mute:{target.key}", None
    if args.action == "clear":
        return f"{args.slot}:{target.key}", None
    expires = None
    if args.action == "mute":
        try:
            expires = (now_ns + parse_duration_ns(args.duration) if args.duration
                       else parse_time(args.until))
        except ValueError as exc:
            raise FeedbackError("invalid_record", str(exc)) from None
    word = make_word(args.action, target, by=args.by, reason=args.reason,
                     created_at_ns=now_ns, expires_at_ns=expires)
    return word.key, word


def describe(word: Word) -> str:
    t = word.target.to_dict()
    what = (f"fingerprint {t['fingerprint']}" if "fingerprint" in t and "id" not in t
            else f"finding id {t['id']}" if "id" in t
            else "entity " + ", ".join(f"{k}={v}" for k, v in t["entity"].items())
            + (f" (kind {t['kind']})" if "kind" in t else ""))
    until = f" until {rfc3339(word.expires_at_ns)}" if word.expires_at_ns else ""
    why = f": {word.reason}" if word.reason else ""
    return f"{word.action} {what}{until} by {word.by} at {rfc3339(word.created_at_ns)}{why}"


async def _list(settings: Settings, as_json: bool) -> int:
    from pipeline.topics import read_all

    state = FeedbackState(max_words=10**9)  # (the command shows everything)
    bad = 0
    for r in await read_all(settings, settings.feedback_topic):
        try:
            state.apply(r.key, r.value)
        except FeedbackError as exc:
            bad += 1
            print(f"(bad record {r.topic}[{r.partition}]@{r.offset}: {exc.reason}: {exc})",
                  file=sys.stderr)
    for key, word in sorted(state.words.items()):
        print(orjson.dumps({"key": key, **word.to_dict()}).decode() if as_json
              else describe(word))
    if not as_json:
        print(f"{len(state)} words on {settings.feedback_topic}"
              + (f"; {bad} bad records skipped" if bad else ""), file=sys.stderr)
    return 0


async def _write(settings: Settings, key: str, word: Word | None) -> None:
    from pipeline.feedback_topic import write
    from pipeline.topics import ensure_topics

    # As tail does: create the output topics (the feedback topic compacted) rather than let
    # the producer's metadata request auto-create it with broker defaults.
    await ensure_topics(settings, internal=False)
    await write(settings, key, word)


def main(args: argparse.Namespace) -> int:
    try:
        settings = Settings.from_env(kafka_bootstrap_servers=args.bootstrap)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    # The Kafka client logs each failed connection; the failure is said once, below.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    try:
        if args.action == "list":
            return asyncio.run(asyncio.wait_for(_list(settings, args.json), 60))
        key, word = build(args, time.time_ns())
        asyncio.run(asyncio.wait_for(_write(settings, key, word), 60))
    except FeedbackError as exc:
        print(f"feedback: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - one clear line, not a traceback
        detail = str(exc) or ("timed out" if isinstance(exc, TimeoutError)
                              else type(exc).__name__)
        print(f"feedback: cannot reach Kafka at {settings.kafka_bootstrap_servers} ({detail}); "
              "is it up? (`make kafka-up`)", file=sys.stderr)
        return 1
    done = f"{describe(word)} (key {key})" if word is not None else f"cleared {key}"
    print(f"{done} on {settings.feedback_topic}")
    return 0
