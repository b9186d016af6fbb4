"""Fields carried beside an event through the speed pipeline, from its reading to its sinks.

Set by one step and read by later ones (speed/validate.py, speed/stateful_features.py,
speed/scoring.py, speed/sinks.py); none is written to a table under these names.
"""

# Seconds since the epoch when an event reached the pipeline (Kafka timestamp or replay read);
# carried beside the record for latency metrics, never written to a table.
ARRIVED_AT = "_arrived_at"
# Version of an event's features: nanoseconds since the epoch when they were computed, kept
# strictly increasing per entity through state (and so across state expiry). An event emitted
# again after a late event carries a higher one, and the hot table keeps the highest: parallel
# writers (two on Flink here) may commit an event's revisions in any order.
REVISION = "_revision"
# Where a record was read ("kafka://topic/partition@offset" or a replay file), carried to the sinks.
SOURCE = "_source"
# The record's text as it arrived, for a dead letter decided after validation (an entity without a
# model, speed/scoring.py): the quarantine keeps what arrived, not a re-serialised copy.
RAW = "_raw"
# What a row acknowledges when its sink commits it: (source of the record read, "k/n"), the k-th
# of the n outputs that reading the record caused (0: its own row; 1..n-1: rows of later events
# revised because it arrived late). Its offset is done only once all n are durable
# (speed/acks.py).
ACK = "_ack"
# A dead-letter output that only acknowledges: a later event of an entity without a model,
# revised by a late one. The event was dead-lettered when it arrived (its own row); a second
# letter would hold a partial copy of it (speed/scoring.py, speed/sinks.py).
ACK_ONLY = "_ack_only"
# The event's first row, new to the hot table: its (event time, event id) follows everything its
# entity's state holds, and state is seeded from silver and the hot table and sees every row this
# job commits, so no row of the hot table has its id. The streaming sink appends such rows (one
# writer, rows in the order state emitted them) instead of MERGEing them (speed/sinks.py).
NEW = "_new"
# The event's score on the relative scale (lakehouse/likelihood.relative_score), set by scoring
# from the model that scored it; the alert step folds it into the entity's calibrated score
# (speed/alert_flags.py), which the hot table keeps as `surprise` and `likelihood`.
RELATIVE = "_relative"
