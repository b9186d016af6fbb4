"""Acknowledgements: what each sink confirms per record it committed, and when a Kafka record is
done, so that its offset may move.

Every sink yields (source, kind) per row after its commit is durable; source names the record as
read ("kafka://topic/partition@offset"). A record read from Kafka causes these outputs:

- a validation dead letter (`dead`), and nothing else; or
- its landing (`landing`, when landing is on), and n scored outputs: its own row (unit 0) and the
  rows of later events of its entity revised because it arrived late (units 1..n-1). Each unit is
  either upserted into the hot table (`hot:k/n`) and, when alerts are on, gone through the alerts
  sink (`alert:k/n`, the broker has every alert of it), or dead-lettered because its entity has
  no model (`unscored:k/n`).

An offset with no record (a transaction marker, a compacted-away record) is a `gap`. A record is
done only when every one of its outputs is durable, so a crash at any moment re-reads it.
"""

from __future__ import annotations

from functools import lru_cache

DEAD, GAP, LANDING = "dead", "gap", "landing"
HOT, ALERT, UNSCORED = "hot", "alert", "unscored"

# How a done record is accounted (speed/kafka_stream.py counts them per partition).
OUTCOME_SCORED, OUTCOME_DEAD, OUTCOME_UNKNOWN_ENTITY, OUTCOME_GAP = "scored", "dead_letter", "unknown_entity", "gap"
OUTCOMES = (OUTCOME_SCORED, OUTCOME_DEAD, OUTCOME_UNKNOWN_ENTITY, OUTCOME_GAP)


def unit(index: int, total: int) -> str:
    return f"{index}/{total}"


def of_unit(sink: str, unit_text: str) -> str:
    return f"{sink}:{unit_text}"


# The frontier asks these of every record: the sets of kinds seen are few (most records have
# the same three), so the answers are cached.
@lru_cache(maxsize=4096)
def is_done(kinds: frozenset, *, lands: bool, alerts: bool) -> bool:
    """Whether a record with these acknowledgements has every output durable."""
    if DEAD in kinds or GAP in kinds:
        return True
    if lands and LANDING not in kinds:
        return False
    sinks_of: dict[int, set[str]] = {}
    total = None
    for kind in kinds:
        sink, _, unit_text = kind.partition(":")
        if unit_text:
            index, _, count = unit_text.partition("/")
            total = int(count)
            sinks_of.setdefault(int(index), set()).add(sink)
    if total is None:
        return False
    for index in range(total):
        sinks = sinks_of.get(index, set())
        if UNSCORED in sinks:
            continue
        if HOT not in sinks or (alerts and ALERT not in sinks):
            return False
    return True


@lru_cache(maxsize=4096)
def outcome(kinds: frozenset) -> str:
    """How a done record counts: scored, dead letter, unknown entity, or no record at all."""
    if GAP in kinds:
        return OUTCOME_GAP
    if DEAD in kinds:
        return OUTCOME_DEAD
    if any(kind.startswith(UNSCORED + ":0/") for kind in kinds):
        return OUTCOME_UNKNOWN_ENTITY
    return OUTCOME_SCORED


@lru_cache(maxsize=4096)
def conflicting(kinds: frozenset) -> bool:
    """A record acknowledged both as a dead letter and as scored or landed: counted twice somewhere."""
    return DEAD in kinds and any(kind != DEAD for kind in kinds)
