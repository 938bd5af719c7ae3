"""Feedback from people and tools about findings: mute, ack, confirm, reject. Pure: no Kafka.

The words live on a compacted control topic (``FEEDBACK_TOPIC``, default ``anomaly_feedback``),
one record per *slot* and *target*, so compaction keeps the latest word of each:

- key ``"<slot>:<target>"``: slot ``mute`` (mute / unmute), ``ack``, or ``label`` (confirm /
  reject); target ``fp:<fingerprint>``, ``id:<finding id>`` (ack and labels only: one
  occurrence of a finding) or ``entity:<pattern>``, the pattern as canonical JSON
  (``{"entity":{"service":"cart*"},"kind":null}``, sorted keys, no spaces);
- value: JSON (``schemas/feedback.schema.json``), or null (a tombstone: unmute, or clear).

``FeedbackState`` holds the current words (capped: words over the cap are refused and counted)
and answers, for a finding: is it muted, acknowledged (by whom, when), labelled (confirmed or
rejected)?

**A mute's expiry is compared with event time**: the event time of the finding's record (its
``detected_at`` or ``resolved_at``, or the publishing partition's watermark when it is published
again later), never the wall clock, so a replay of the same telemetry with the same words gives
the same records. ``--for 2h`` is two hours from when the command ran; in live traffic event
time follows the wall clock, so that is two hours.

    >>> state = FeedbackState()
    >>> w = make_word("mute", Target(entity=(("service", "cart*"),)), by="ana", reason="deploy",
    ...               created_at_ns=0, expires_at_ns=7200 * 10**9)
    >>> state.apply(w.key.encode(), w.to_json()).action
    'mute'
    >>> bool(state.mute("f" * 32, "memory_leak", {"service": "cart-2"}, at_ns=3600 * 10**9))
    True
    >>> state.mute("f" * 32, "memory_leak", {"service": "cart-2"}, at_ns=7200 * 10**9) is None
    True
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from fnmatch import fnmatchcase
from typing import Any

import orjson

from pipeline.findings import Finding, rfc3339

SCHEMA_VERSION = "1.0"
ACTIONS = ("mute", "ack", "confirm", "reject")
#: The slot each action's word takes: confirm and reject replace each other.
SLOTS = {"mute": "mute", "ack": "ack", "confirm": "label", "reject": "label"}
#: Why a record was refused (the label of ``anomaly_pipeline_feedback_rejected_total``).
REASONS = ("invalid_key", "invalid_json", "invalid_record", "key_mismatch", "over_cap")
DEFAULT_MAX_WORDS = 10_000
_HEX32 = re.compile(r"^[0-9a-f]{32}$")
MAX_TEXT = 1000  # characters of ``by`` and ``reason`` kept


class FeedbackError(ValueError):
    """A feedback record or command that cannot be used; ``reason`` is one of ``REASONS``."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Target:
    """What a word is about: one fingerprint, one occurrence (finding id), or an entity pattern
    (each key's glob, ``fnmatch`` style and case-sensitive, must match the finding's entity
    value; ``kind``, if given, is a glob on the finding's kind)."""

    fingerprint: str | None = None
    id: str | None = None
    kind: str | None = None
    entity: tuple[tuple[str, str], ...] = ()

    @property
    def key(self) -> str:
        if self.id:
            return f"id:{self.id}"
        if self.fingerprint:
            return f"fp:{self.fingerprint}"
        doc = {"kind": self.kind, "entity": dict(self.entity)}
        return "entity:" + orjson.dumps(doc, option=orjson.OPT_SORT_KEYS).decode()

    def matches(self, fp: str, kind: str, entity: Mapping[str, Any],
                finding_id: str | None = None) -> bool:
        if self.id:
            return finding_id == self.id
        if self.fingerprint:
            return fp == self.fingerprint
        if self.kind is not None and not fnmatchcase(kind, self.kind):
            return False
        return all(k in entity and fnmatchcase(str(entity[k]), glob) for k, glob in self.entity)

    def to_dict(self) -> dict[str, Any]:
        if self.id or self.fingerprint:
            return {k: v for k, v in (("fingerprint", self.fingerprint), ("id", self.id)) if v}
        doc: dict[str, Any] = {"entity": dict(self.entity)}
        if self.kind is not None:
            doc["kind"] = self.kind
        return doc

    @classmethod
    def from_dict(cls, doc: Any) -> Target:
        if not isinstance(doc, dict):
            raise FeedbackError("invalid_record", "target must be an object")
        unknown = set(doc) - {"fingerprint", "id", "kind", "entity"}
        if unknown:
            raise FeedbackError("invalid_record", f"target has unknown fields {sorted(unknown)}")
        fp, fid, kind, entity = (doc.get(k) for k in ("fingerprint", "id", "kind", "entity"))
        for name, v in (("fingerprint", fp), ("id", fid)):
            if v is not None and not (isinstance(v, str) and _HEX32.match(v)):
                raise FeedbackError("invalid_record", f"target.{name} must be 32 hex digits")
        if fp or fid:
            if entity is not None or kind is not None:
                raise FeedbackError("invalid_record", "a target is a fingerprint (or id) or an "
                                    "entity pattern, not both")
            return cls(fingerprint=fp, id=fid)
        if not isinstance(entity, dict) or not entity:
            raise FeedbackError("invalid_record", "target needs a fingerprint, an id, or a "
                                "non-empty entity pattern {key: glob}")
        if not all(isinstance(k, str) and k and isinstance(v, str) and v
                   for k, v in entity.items()):
            raise FeedbackError("invalid_record", "entity pattern values must be non-empty "
                                "strings (globs)")
        if kind is not None and not (isinstance(kind, str) and kind):
            raise FeedbackError("invalid_record", "target.kind must be a non-empty string")
        return cls(kind=kind, entity=tuple(sorted(entity.items())))


@dataclass(frozen=True, slots=True)
class Word:
    """One current word: ``action`` on ``target``, by whom, why, when (and until when)."""

    action: str
    target: Target
    by: str
    reason: str
    created_at_ns: int
    expires_at_ns: int | None = None  # mute only (required there)

    @property
    def slot(self) -> str:
        return SLOTS[self.action]

    @property
    def key(self) -> str:
        return f"{self.slot}:{self.target.key}"

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION, "action": self.action,
            "target": self.target.to_dict(), "by": self.by, "reason": self.reason,
            "created_at": rfc3339(self.created_at_ns),
        }
        if self.expires_at_ns is not None:
            doc["expires_at"] = rfc3339(self.expires_at_ns)
        return doc

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_dict())


def make_word(action: str, target: Target, *, by: str, reason: str, created_at_ns: int,
              expires_at_ns: int | None = None) -> Word:
    """A valid word, or ``FeedbackError`` saying what is wrong (the command's checks)."""
    if action not in ACTIONS:
        raise FeedbackError("invalid_record", f"action {action!r}: use one of {ACTIONS}")
    if action == "mute":
        if expires_at_ns is None:
            raise FeedbackError("invalid_record", "a mute needs an expiry (expires_at): "
                                "a mute that never ends hides a problem for good")
        if expires_at_ns <= created_at_ns:
            raise FeedbackError("invalid_record", "a mute's expiry must be after its creation")
        if target.id:
            raise FeedbackError("invalid_record", "mute a fingerprint or an entity pattern, "
                                "not one occurrence (id)")
    elif expires_at_ns is not None:
        raise FeedbackError("invalid_record", f"only a mute has an expiry, not {action}")
    if not by:
        raise FeedbackError("invalid_record", "say who gives the word (by)")
    return Word(action, target, by[:MAX_TEXT], reason[:MAX_TEXT], created_at_ns, expires_at_ns)


def parse_time(text: Any) -> int:
    """RFC 3339 → Unix nanoseconds (millisecond precision); ``ValueError`` if not one."""
    if not isinstance(text, str) or "T" not in text.upper():
        raise ValueError(f"{text!r} is not an RFC 3339 time (2026-01-05T08:00:00Z)")
    dt = datetime.fromisoformat(text.replace("z", "Z").replace("Z", "+00:00"))
    if dt.tzinfo is None:
        raise ValueError(f"{text!r} has no time zone: add Z or an offset")
    return int(dt.timestamp() * 1000) * 1_000_000


def parse_key(key: bytes | None) -> tuple[str, str]:
    """``(slot, target key)`` of a record key; ``FeedbackError("invalid_key")`` otherwise."""
    try:
        text = (key or b"").decode()
    except UnicodeDecodeError:
        raise FeedbackError("invalid_key", "the key is not UTF-8") from None
    slot, _, target = text.partition(":")
    if slot not in set(SLOTS.values()) or not target.startswith(("fp:", "id:", "entity:")):
        raise FeedbackError("invalid_key", f"key {text[:200]!r} is not <mute|ack|label>:"
                            "<fp:FINGERPRINT|id:ID|entity:PATTERN>")
    return slot, target


def parse_word(key: bytes | None, value: bytes) -> Word:
    """The word a record holds (its key must be the one its value implies)."""
    slot, _ = parse_key(key)
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise FeedbackError("invalid_json", f"the value is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise FeedbackError("invalid_record", "the value must be a JSON object")
    version = str(doc.get("schema_version", ""))
    if version.split(".")[0] != SCHEMA_VERSION.split(".")[0]:
        raise FeedbackError("invalid_record", f"schema_version {version!r}: this worker reads "
                            f"{SCHEMA_VERSION.split('.')[0]}.x")
    action = doc.get("action")
    if action not in ACTIONS:
        raise FeedbackError("invalid_record", f"action {action!r}: use one of {ACTIONS}")
    by, reason = doc.get("by"), doc.get("reason", "")
    if not isinstance(by, str) or not isinstance(reason, str):
        raise FeedbackError("invalid_record", "by and reason must be strings")
    try:
        created = parse_time(doc.get("created_at"))
        expires = parse_time(doc["expires_at"]) if doc.get("expires_at") is not None else None
    except ValueError as exc:
        raise FeedbackError("invalid_record", str(exc)) from None
    word = make_word(action, Target.from_dict(doc.get("target")), by=by, reason=reason,
                     created_at_ns=created, expires_at_ns=expires)
    if word.key.encode() != key or word.slot != slot:
        raise FeedbackError("key_mismatch", f"key {key!r} is not the word's key {word.key!r} "
                            "(compaction would keep the wrong word)")
    return word


@dataclass(frozen=True, slots=True)
class Applied:
    """What one record did: ``action`` (a word's action, ``unmute`` or ``clear`` for a
    tombstone), the target it changed (None for a tombstone of a key not held) and its slot."""

    action: str
    slot: str
    target: Target | None


class FeedbackState:
    """The current words, by key, at most ``max_words`` of them (new keys beyond are refused:
    ``overflow`` counts them). Fingerprint and id words are found by key; entity patterns are
    scanned (the cap bounds the scan)."""

    def __init__(self, max_words: int = DEFAULT_MAX_WORDS) -> None:
        if max_words < 1:
            raise ValueError("max_words must be >= 1")
        self.max_words = max_words
        self.words: dict[str, Word] = {}
        self._patterns: dict[str, Word] = {}  # the entity-pattern words, by key
        self.overflow = 0

    def __len__(self) -> int:
        return len(self.words)

    def apply(self, key: bytes | None, value: bytes | None) -> Applied:
        """Apply one record of the topic; ``FeedbackError`` (nothing changed) if it is bad."""
        if value is None:  # tombstone: unmute / clear
            slot, _ = parse_key(key)
            old = self._drop(key.decode() if key else "")
            return Applied("unmute" if slot == "mute" else "clear", slot,
                           old.target if old else None)
        word = parse_word(key, value)
        if word.key not in self.words and len(self.words) >= self.max_words:
            self.overflow += 1
            raise FeedbackError("over_cap", f"{self.max_words} words held (FEEDBACK_MAX_WORDS): "
                                f"{word.key} not applied; clear old words")
        self.words[word.key] = word
        if word.target.key.startswith("entity:"):
            self._patterns[word.key] = word
        return Applied(word.action, word.slot, word.target)

    def _drop(self, key: str) -> Word | None:
        self._patterns.pop(key, None)
        return self.words.pop(key, None)

    def _matching(self, slot: str, fp: str, kind: str, entity: Mapping[str, Any],
                  finding_id: str | None) -> list[Word]:
        """The slot's words about this finding, most specific first (id, fingerprint, then
        entity patterns, newest first)."""
        keys = ([f"{slot}:id:{finding_id}"] if finding_id else []) + [f"{slot}:fp:{fp}"]
        out = [self.words[k] for k in keys if k in self.words]
        pats = [w for w in self._patterns.values()
                if w.slot == slot and w.target.matches(fp, kind, entity)]
        return out + sorted(pats, key=lambda w: -w.created_at_ns)

    def mute(self, fp: str, kind: str, entity: Mapping[str, Any], at_ns: int) -> Word | None:
        """The mute in force at event time ``at_ns`` (expiry after it), if any."""
        for w in self._matching("mute", fp, kind, entity, None):
            if w.expires_at_ns is not None and w.expires_at_ns > at_ns:
                return w
        return None

    def ack(self, fp: str, kind: str, entity: Mapping[str, Any],
            finding_id: str | None = None) -> Word | None:
        found = self._matching("ack", fp, kind, entity, finding_id)
        return found[0] if found else None

    def label(self, fp: str, kind: str, entity: Mapping[str, Any],
              finding_id: str | None = None) -> Word | None:
        """The confirm or reject word about this finding (the most specific, then the newest)."""
        found = self._matching("label", fp, kind, entity, finding_id)
        return found[0] if found else None

    def annotate(self, finding: Finding, at_ns: int) -> None:
        """Set the finding's ``muted`` and ``acknowledged`` as the words say at ``at_ns``."""
        finding.muted = self.mute(finding.fingerprint, finding.kind, finding.entity,
                                  at_ns) is not None
        ack = self.ack(finding.fingerprint, finding.kind, finding.entity, finding.id)
        finding.acknowledged = (
            {"by": ack.by, "at": rfc3339(ack.created_at_ns)} if ack is not None else None)


def finding_event_ns(finding: Finding, watermark_ns: int = 0) -> int:
    """The event time a finding's record is judged at: when it resolved or opened, or the
    partition's watermark if that is later (a record published again for a changed word)."""
    return max(finding.resolved_at_ns or finding.detected_at_ns, watermark_ns)
