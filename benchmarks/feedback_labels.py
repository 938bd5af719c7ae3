"""Operator-judged precision: the findings on the findings topic scored against the confirm /
reject labels people wrote on the feedback topic (``python -m pipeline feedback confirm``).

    python -m benchmarks.feedback_labels [--bootstrap HOST:PORT]

Reads ``FINDINGS_TOPIC`` and ``FEEDBACK_TOPIC`` to their ends (no consumer group, nothing
committed or written) and prints, per finding kind, the occurrences (finding ids) and how many
were confirmed, rejected or left unlabelled, and the precision people judged:
confirmed / (confirmed + rejected). As the other benchmarks, the last line is one JSON object.
A label names one occurrence (``--id``), every occurrence of a fingerprint, or an entity
pattern; the most specific label of an occurrence counts (see ``FeedbackState.label``). This is
the simulator-free complement of ``benchmarks.accuracy``: it scores live findings, where no
ground truth exists but the on-call's word.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Iterable, Mapping
from typing import Any

import orjson

from pipeline.feedback import FeedbackError, FeedbackState


def occurrences(findings: Iterable[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    """The latest record of each finding occurrence (id), in the order given (topic order)."""
    out: dict[str, Mapping[str, Any]] = {}
    for f in findings:
        if isinstance(f, Mapping) and f.get("id") and f.get("kind"):
            out[str(f["id"])] = f
    return out


def labels_from(records: Iterable[tuple[bytes | None, bytes | None]]) -> FeedbackState:
    """The words of feedback records (key, value) in topic order; bad records are skipped."""
    state = FeedbackState(max_words=10**9)
    for key, value in records:
        try:
            state.apply(key, value)
        except FeedbackError:
            continue
    return state


def score_labels(findings: Iterable[Mapping[str, Any]],
                 labels: FeedbackState) -> dict[str, dict[str, Any]]:
    """Per kind: occurrences, confirmed, rejected, unlabelled, muted (latest record muted),
    precision (confirmed / labelled; None with none labelled) and the labelled share.

    >>> from pipeline.feedback import Target, make_word
    >>> w = make_word("reject", Target(fingerprint="a" * 32), by="ana", reason="",
    ...               created_at_ns=0)
    >>> state = labels_from([(w.key.encode(), w.to_json())])
    >>> f = {"id": "1" * 32, "fingerprint": "a" * 32, "kind": "memory_leak", "entity": {}}
    >>> score_labels([f], state)["memory_leak"]["rejected"]
    1
    """
    out: dict[str, dict[str, Any]] = {}
    for fid, f in occurrences(findings).items():
        kind = str(f["kind"])
        row = out.setdefault(kind, {"findings": 0, "confirmed": 0, "rejected": 0,
                                    "unlabelled": 0, "muted": 0})
        row["findings"] += 1
        row["muted"] += bool(f.get("muted"))
        word = labels.label(str(f.get("fingerprint", "")), kind, f.get("entity") or {}, fid)
        row["confirmed" if word and word.action == "confirm"
            else "rejected" if word else "unlabelled"] += 1
    for row in out.values():
        judged = row["confirmed"] + row["rejected"]
        row["precision"] = round(row["confirmed"] / judged, 4) if judged else None
        row["labelled_share"] = round(judged / row["findings"], 4)
    return dict(sorted(out.items()))


async def read_and_score(settings: Any) -> dict[str, dict[str, Any]]:
    """Read both topics to their ends and score (``settings``: ``pipeline.settings.Settings``)."""
    from pipeline.topics import read_all

    found = await read_all(settings, settings.findings_topic, timeout_s=120)
    words = await read_all(settings, settings.feedback_topic)
    findings = []
    for r in found:
        try:
            doc = orjson.loads(r.value) if r.value else None
        except orjson.JSONDecodeError:
            continue
        if isinstance(doc, dict):
            findings.append(doc)
    return score_labels(findings, labels_from((r.key, r.value) for r in words))


def table(scores: Mapping[str, Mapping[str, Any]]) -> str:
    head = (f"{'kind':22} {'findings':>8} {'confirmed':>9} {'rejected':>8} {'unlabelled':>10} "
            f"{'muted':>6} {'precision':>9}")
    lines = [head]
    for kind, r in scores.items():
        p = "-" if r["precision"] is None else f"{r['precision']:.2f}"
        lines.append(f"{kind:22} {r['findings']:8} {r['confirmed']:9} {r['rejected']:8} "
                     f"{r['unlabelled']:10} {r['muted']:6} {p:>9}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from pipeline.settings import ConfigError, Settings

    p = argparse.ArgumentParser(prog="python -m benchmarks.feedback_labels",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--bootstrap", help="Kafka bootstrap servers (env KAFKA_BOOTSTRAP_SERVERS)")
    args = p.parse_args(argv)
    try:
        settings = Settings.from_env(kafka_bootstrap_servers=args.bootstrap)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    scores = asyncio.run(read_and_score(settings))
    print(f"findings on {settings.findings_topic} scored against the labels on "
          f"{settings.feedback_topic}")
    print(table(scores))
    print(orjson.dumps(scores).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
