"""The committed-offset frontier of a followed Kafka partition (speed/kafka_stream.py)."""

from __future__ import annotations

from speed.kafka_stream import ACK_GAP, advance, parse_source, source_of
from speed.sinks import ACK_DEAD, ACK_HOT, ACK_LANDING


def test_the_frontier_moves_only_over_records_every_sink_holds():
    # Offsets 10..14: 10 valid (hot + landing), 11 dead, 12 a transaction marker, 13 valid but only
    # in the hot table so far, 14 valid and complete.
    acks = [(10, ACK_HOT), (11, ACK_DEAD), (12, ACK_GAP), (13, ACK_HOT), (14, ACK_HOT), (14, ACK_LANDING), (10, ACK_LANDING)]
    frontier, pending = advance(10, {}, acks, lands=True)
    assert frontier == 13 and set(pending) == {13, 14}
    # 13 lands: the frontier jumps over 14 too.
    frontier, pending = advance(frontier, pending, [(13, ACK_LANDING)], lands=True)
    assert frontier == 15 and pending == {}
    # Without landing, the hot table alone completes a valid record; repeats below the frontier
    # (a restart re-reading) are ignored.
    frontier, pending = advance(15, {}, [(16, ACK_HOT), (3, ACK_HOT), (15, ACK_HOT)], lands=False)
    assert frontier == 17 and pending == {}


def test_an_out_of_order_acknowledgement_waits_for_the_gap_before_it():
    frontier, pending = advance(0, {}, [(1, ACK_DEAD), (2, ACK_DEAD)], lands=False)
    assert frontier == 0 and set(pending) == {1, 2}
    frontier, pending = advance(frontier, pending, [(0, ACK_DEAD)], lands=False)
    assert frontier == 3 and pending == {}


def test_sources_name_topic_partition_and_offset():
    source = source_of("lakehouse.sensor_events.events", 3, 1234)
    assert source == "kafka://lakehouse.sensor_events.events/3@1234"
    assert parse_source(source) == ("lakehouse.sensor_events.events/3", 1234)
    assert parse_source("/data/replay.jsonl") is None
