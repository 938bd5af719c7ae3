"""What a corpus recording holds: its spans, and per label window the spans that report an error
or a 4xx, to check a recording before scoring on it.

    python -m benchmarks.corpus.summary .cache/corpus/errors [--json]

A span is counted when its status is ERROR, its HTTP status (``http.status_code`` or
``http.response.status_code``) is 400 or more, or it carries an exception; it is keyed by
(service, span name, kind, status, HTTP status, exception type), exactly as decoded. Per window
(a label's start to end, by the span's start; spans outside every label are "outside"): spans,
traces' root spans, roots that failed (ERROR or HTTP >= 500: the request failed for its
client), and the counted spans.
"""

from __future__ import annotations

import argparse
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson

from benchmarks.corpus.recorder import Recording
from pipeline import otlp
from pipeline.records import Span

KIND_NAMES = {0: "unspecified", 1: "internal", 2: "server", 3: "client", 4: "producer",
              5: "consumer"}
STATUS_NAMES = {0: "unset", 1: "ok", 2: "error"}


def http_status(span: Span) -> int | None:
    code = span.attrs.get("http.response.status_code", span.attrs.get("http.status_code"))
    return int(code) if isinstance(code, int | float | str) and str(code).isdigit() else None


def error_key(span: Span) -> tuple[Any, ...] | None:
    """The span's error signals as a key, or None if it reports none."""
    code = http_status(span)
    exc = span.attrs.get("exception.type")
    if span.status != 2 and (code is None or code < 400) and not exc:
        return None
    return (span.resource.service, span.name, KIND_NAMES.get(span.kind, str(span.kind)),
            STATUS_NAMES.get(span.status, str(span.status)), code, exc)


def failed_root(span: Span) -> bool:
    code = http_status(span)
    return not span.parent_id and (span.status == 2 or (code is not None and code >= 500))


def summarize(spans: Iterable[Span], lines: list[dict[str, Any]]) -> dict[str, Any]:
    """Totals and per-window counts (module docstring) of ``spans`` under the label lines
    ``lines`` (a ``run`` line, then labels)."""
    labels = [ln for ln in lines if ln.get("type") == "label"]
    names = [f"{ln.get('fault', ln['kind'])} ({ln['kind']}"
             f"{', negative' if ln.get('negative') else ''})" for ln in labels]
    windows: dict[str, dict[str, Any]] = {
        n: {"spans": 0, "roots": 0, "failed_roots": 0, "errors": Counter()}
        for n in [*names, "outside"]}
    total = {"spans": 0, "traces": set(), "error_spans": 0}
    for s in spans:
        total["spans"] += 1
        total["traces"].add(s.trace_id)
        key = error_key(s)
        total["error_spans"] += key is not None
        inside = [n for n, ln in zip(names, labels, strict=True)
                  if ln["start_unix_nano"] <= s.start_ns <= ln["end_unix_nano"]] or ["outside"]
        for n in inside:
            w = windows[n]
            w["spans"] += 1
            w["roots"] += not s.parent_id
            w["failed_roots"] += failed_root(s)
            if key is not None:
                w["errors"][key] += 1
    return {"spans": total["spans"], "traces": len(total["traces"]),
            "error_spans": total["error_spans"],
            "windows": {n: {**w, "errors": [[*k, v] for k, v in sorted(
                w["errors"].items(), key=lambda kv: (-kv[1], str(kv[0])))]}
                for n, w in windows.items()}}


def read_spans(run: Path) -> Iterable[Span]:
    for _, signal, body in Recording(run / "otlp.bin"):
        if signal == "spans":
            yield from otlp.decode_spans(body, "otlp_proto").items


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path, help="a recording (corpus.record --out)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    lines = [orjson.loads(x) for x in (args.run / "labels.jsonl").read_bytes().splitlines()
             if x.strip()]
    got = summarize(read_spans(args.run), lines)
    if args.json:
        print(orjson.dumps(got).decode())
        return
    print(f"{args.run}: {got['spans']:,} spans, {got['traces']:,} traces, "
          f"{got['error_spans']:,} with an error, a 4xx or an exception")
    for name, w in got["windows"].items():
        print(f"  {name}: {w['spans']:,} spans, {w['roots']:,} requests, "
              f"{w['failed_roots']:,} failed")
        for service, span, kind, status, code, exc, n in w["errors"]:
            print(f"    {n:6,} {service:<10} {span!r:<16} {kind:<7} status={status:<6} "
                  f"http={code if code is not None else '-':<4} {exc or ''}")


if __name__ == "__main__":
    main()
