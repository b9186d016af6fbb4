"""The committed-offset frontier of a followed Kafka partition (speed/kafka_stream.py)."""

from __future__ import annotations

import pytest

from lakehouse.errors import ServiceError
from speed.acks import ALERT, DEAD as ACK_DEAD, GAP as ACK_GAP, HOT, LANDING as ACK_LANDING, UNSCORED
from speed.kafka_stream import advance, parse_source, source_of

ACK_HOT = f"{HOT}:0/1"


def test_the_frontier_moves_only_over_records_every_sink_holds():
    # Offsets 10..14: 10 valid (hot + landing), 11 dead, 12 a transaction marker, 13 valid but only
    # in the hot table so far, 14 valid and complete.
    acks = [(10, ACK_HOT), (11, ACK_DEAD), (12, ACK_GAP), (13, ACK_HOT), (14, ACK_HOT), (14, ACK_LANDING), (10, ACK_LANDING)]
    frontier, pending, _ = advance(10, {}, acks, lands=True)
    assert frontier == 13 and set(pending) == {13, 14}
    # 13 lands: the frontier jumps over 14 too.
    frontier, pending, _ = advance(frontier, pending, [(13, ACK_LANDING)], lands=True)
    assert frontier == 15 and pending == {}
    # Without landing, the hot table alone completes a valid record; repeats below the frontier
    # (a restart re-reading) are ignored.
    frontier, pending, _ = advance(15, {}, [(16, ACK_HOT), (3, ACK_HOT), (15, ACK_HOT)], lands=False)
    assert frontier == 17 and pending == {}


def test_an_out_of_order_acknowledgement_waits_for_the_gap_before_it():
    frontier, pending, _ = advance(0, {}, [(1, ACK_DEAD), (2, ACK_DEAD)], lands=False)
    assert frontier == 0 and set(pending) == {1, 2}
    frontier, pending, _ = advance(frontier, pending, [(0, ACK_DEAD)], lands=False)
    assert frontier == 3 and pending == {}


def test_sources_name_topic_partition_and_offset():
    source = source_of("lakehouse.sensor_events.events", 3, 1234)
    assert source == "kafka://lakehouse.sensor_events.events/3@1234"
    assert parse_source(source) == ("lakehouse.sensor_events.events/3", 1234)
    assert parse_source("/data/replay.jsonl") is None


def test_a_late_record_is_done_only_when_every_row_it_revised_is_durable():
    # Offset 5 arrived late and revised two later events: its outputs are units 0, 1 and 2.
    received = [(5, ACK_LANDING), (5, f"{HOT}:0/3"), (5, f"{HOT}:2/3"), (5, f"{ALERT}:0/3"), (5, f"{ALERT}:2/3")]
    frontier, pending, outcomes = advance(5, {}, received, lands=True, alerts=True)
    assert frontier == 5 and outcomes == {}
    # Unit 1 in the hot table but its alerts not yet on the broker: still not done.
    frontier, pending, outcomes = advance(frontier, pending, [(5, f"{HOT}:1/3")], lands=True, alerts=True)
    assert frontier == 5
    frontier, pending, outcomes = advance(frontier, pending, [(5, f"{ALERT}:1/3")], lands=True, alerts=True)
    assert frontier == 6 and pending == {} and outcomes == {"scored": 1}


def test_an_unknown_entity_is_done_only_once_landed_too():
    frontier, pending, outcomes = advance(0, {}, [(0, f"{UNSCORED}:0/1")], lands=True, alerts=True)
    assert frontier == 0
    frontier, pending, outcomes = advance(frontier, pending, [(0, ACK_LANDING), (1, ACK_DEAD), (2, ACK_GAP)], lands=True, alerts=True)
    assert frontier == 3 and outcomes == {"unknown_entity": 1, "dead_letter": 1, "gap": 1}


def test_a_record_acknowledged_both_dead_and_scored_is_an_error():
    with pytest.raises(ServiceError, match="dead letter and as more"):
        advance(0, {}, [(0, ACK_DEAD), (0, ACK_HOT)], lands=False)
