"""The whole Lambda cycle (`lakehouse demo`) on real Spark + Delta, Beam and Trino."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from deltalake import DeltaTable

from lakehouse import constants
from lakehouse.settings import get_settings
from serving import trino_client

pytestmark = [pytest.mark.e2e, pytest.mark.spark, pytest.mark.beam, pytest.mark.trino]


def _valid_event_ids(files: dict) -> set[str]:
    from schemas import load
    from schemas.rules import RecordValidator

    validator = RecordValidator(load("sensor_events"))
    valid = set()
    for name, path in files.items():
        if name == "labels":
            continue
        for line in open(path):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            typed, _ = validator.validate(record)
            if typed:
                valid.add(typed["event_id"])
    return valid


def test_batch_runs_account_for_every_record(demo):
    for record in demo["batch"]:
        assert record.status == "succeeded"
        assert record.input_rows == record.valid_rows + record.quarantined_rows + record.duplicate_rows
        assert record.quarantined_rows > 0 and record.duplicate_rows > 0
    first, second = demo["batch"]
    assert second.watermark > first.watermark
    # Run 2 expired the hot rows of replay A that its watermark now covers.
    assert second.expired_hot_rows > 0
    assert second.model_version == first.model_version + 1


def test_every_kafka_message_is_scored_or_a_dead_letter(demo):
    for produced, result in zip(demo["produced"], demo["speed"]):
        assert produced == result.scored + result.dead_letters
        assert result.dead_letters > 0  # the planted bad records and the malformed line
    # Replay B's run read only the messages produced after replay A's run committed its offsets.
    assert len(demo["speed"]) == 2


def test_the_merged_view_answers_every_valid_event_once_from_both_layers(demo):
    merged = trino_client.query('SELECT event_id, event_time, layer, watermark FROM delta.sensor_events.merged', settings=get_settings())
    assert merged.event_id.is_unique
    assert set(merged.event_id) == _valid_event_ids(demo["files"])
    layers = merged.layer.value_counts()
    assert layers["batch"] > 0 and layers["speed"] > 0


def test_the_merged_view_switches_layers_at_the_watermark(demo):
    watermark = pd.Timestamp(demo["batch"][-1].watermark)
    merged = trino_client.query('SELECT event_time, layer, watermark FROM delta.sensor_events.merged', settings=get_settings())
    assert (merged.watermark == watermark).all()
    batch = merged[merged.layer == "batch"]
    speed = merged[merged.layer == "speed"]
    assert batch.event_time.max() == watermark
    assert speed.event_time.min() > watermark


def test_planted_spikes_are_flagged_in_the_merged_view(demo):
    flagged = demo["flagged"]
    assert len(flagged) == len(demo["spikes"]) == 8
    assert set(flagged.layer) == {"batch", "speed"}
    assert flagged.is_anomaly.all()


def test_planted_spikes_raise_alerts_and_alerts_are_fewer_than_alarms(demo):
    """sensor_events declares alert_quiet_events 12: each planted spike (isolated) is an alert,
    and the alerts view holds only flagged events, at most as many as the anomalies view."""
    ids = ", ".join(f"'{event_id}'" for event_id in demo["spikes"])
    alerted = trino_client.query(f"SELECT event_id FROM sensor_events.alerts WHERE event_id IN ({ids})", role="analyst", settings=get_settings())
    assert set(alerted.event_id) == set(demo["spikes"])
    # The calibrated score (both layers write it) ranks the planted spikes above nearly every other
    # event, on one scale for every entity.
    surprises = trino_client.query("SELECT event_id, surprise FROM sensor_events.merged", role="analyst", settings=get_settings())
    spikes = surprises[surprises.event_id.isin(demo["spikes"])].surprise
    assert len(spikes) == len(demo["spikes"]) and spikes.notna().all()
    assert spikes.min() > surprises.surprise.quantile(0.95) and spikes.median() > surprises.surprise.quantile(0.99)
    counts = trino_client.query("SELECT (SELECT count(*) FROM sensor_events.alerts) AS alerts, "
                                "(SELECT count(*) FROM sensor_events.anomalies) AS anomalies, "
                                "(SELECT count(*) FROM sensor_events.alerts a JOIN sensor_events.anomalies f ON a.event_id = f.event_id) AS flagged", settings=get_settings())
    assert 0 < counts.alerts[0] == counts.flagged[0] <= counts.anomalies[0]
    # `lakehouse alerts --hours N`: all of them when N spans the data, the newest hours' otherwise.
    from serving import views

    assert len(views.recent_alerts("sensor_events", 24 * 30, role="analyst", settings=get_settings())) == counts.alerts[0]
    newest = trino_client.query("SELECT count(*) AS n FROM sensor_events.alerts "
                                "WHERE event_time > (SELECT max(event_time) FROM sensor_events.merged) - INTERVAL '6' HOUR", settings=get_settings())
    recent = views.recent_alerts("sensor_events", 6, settings=get_settings())
    assert len(recent) == newest.n[0] and recent.event_time.is_monotonic_decreasing and "surprise" in recent.columns


def test_an_event_reads_back_the_same_through_trino(demo):
    settings = get_settings()
    silver = DeltaTable(settings.table_uri("sensor_events", constants.SILVER)).to_pandas()
    event = silver.sort_values("event_id").iloc[0]
    through_trino = trino_client.query(
        "SELECT event_id, entity_id, event_time, temperature, pressure, vibration, status "
        "FROM delta.sensor_events.silver WHERE event_id = ?",
        [event.event_id], settings=get_settings()
    ).iloc[0]
    for column in ("event_id", "entity_id", "status", "temperature", "pressure", "vibration"):
        assert through_trino[column] == event[column]
    assert pd.Timestamp(through_trino.event_time) == pd.Timestamp(event.event_time)


def test_quarantine_through_trino_names_the_failed_rules_of_both_layers(demo):
    quarantine = demo["quarantine"]
    assert set(quarantine.layer) == {"batch", "speed"}
    assert "record.json" in set(quarantine.rule)
    assert {"temperature.type", "pressure.range", "status.allowed_values"} <= set(quarantine.rule)


def test_trino_sees_silver_with_the_types_the_declaration_derives(demo):
    from schemas import load
    from schemas.engines import trino_columns

    described = trino_client.query("DESCRIBE delta.sensor_events.silver", settings=get_settings())
    seen = dict(zip(described.Column, described.Type))
    for column, trino_type in trino_columns(load("sensor_events")).items():
        assert seen[column] == trino_type, column


def test_convenience_views_add_up_to_the_merged_view(demo):
    from serving import views

    merged = trino_client.query("SELECT entity_id, count(*) AS events, count_if(is_anomaly) AS anomalies "
                                "FROM sensor_events.merged GROUP BY 1 ORDER BY 1", settings=get_settings())
    summary = trino_client.query("SELECT * FROM sensor_events.entity_summary ORDER BY entity_id", role="analyst", settings=get_settings())
    assert summary.entity_id.tolist() == merged.entity_id.tolist()
    assert summary.events.tolist() == merged.events.tolist() and summary.anomalies.tolist() == merged.anomalies.tolist()
    assert (summary.batch_events + summary.speed_events).tolist() == merged.events.tolist()
    anomalies = trino_client.query("SELECT entity_id, count(*) AS n FROM sensor_events.anomalies GROUP BY 1 ORDER BY 1", settings=get_settings())
    assert dict(zip(anomalies.entity_id, anomalies.n)) == {e: n for e, n in zip(merged.entity_id, merged.anomalies) if n}
    hourly = trino_client.query("SELECT sum(events) AS events, sum(anomalies) AS anomalies FROM sensor_events.anomalies_hourly", settings=get_settings())
    assert hourly.events[0] == merged.events.sum() and hourly.anomalies[0] == merged.anomalies.sum()
    # The last N hours: everything when N spans the data, the newest hours' share otherwise.
    everything = views.recent_anomalies("sensor_events", 24 * 30, settings=get_settings())
    assert everything.anomalies.sum() == merged.anomalies.sum()
    newest = trino_client.query("SELECT count_if(is_anomaly) AS n FROM sensor_events.merged "
                                "WHERE date_trunc('hour', event_time) > (SELECT max(date_trunc('hour', event_time)) "
                                "FROM sensor_events.merged) - INTERVAL '6' HOUR", settings=get_settings())
    assert views.recent_anomalies("sensor_events", 6, settings=get_settings()).anomalies.sum() == newest.n[0]


def test_data_quality_views_follow_the_run_log_and_the_quarantine(demo):
    runs = trino_client.query("SELECT * FROM lakehouse.dq_runs WHERE dataset = 'sensor_events' ORDER BY started_at", role="analyst", settings=get_settings())
    assert runs.run_id.tolist()[-2:] == [record.run_id for record in demo["batch"]]
    assert runs.counts_add_up.all()
    rules = trino_client.query("SELECT layer, rule, sum(records) AS records FROM lakehouse.dq_rule_failures "
                               "WHERE dataset = 'sensor_events' GROUP BY 1, 2", role="analyst", settings=get_settings())
    quarantine = demo["quarantine"]  # the demo's own count over the quarantine table
    assert dict(zip(zip(rules.layer, rules.rule), rules.records)) == dict(zip(zip(quarantine.layer, quarantine.rule), quarantine.records))
    assert set(rules.layer) == {"batch", "speed"}


def test_the_analyst_reads_the_views_and_may_write_nothing(demo):
    from lakehouse.errors import QueryError, ServiceError

    assert len(trino_client.query("SELECT * FROM sensor_events.merged LIMIT 5", role="analyst", settings=get_settings())) == 5
    refused = [
        "INSERT INTO sensor_events.hot_scores (event_id) VALUES ('forged')",
        "DELETE FROM sensor_events.batch_scores",
        "CREATE TABLE sensor_events.copy AS SELECT * FROM sensor_events.silver",
        "CREATE OR REPLACE VIEW sensor_events.merged AS SELECT 1 AS x",
        "DROP VIEW sensor_events.anomalies",
        "CALL delta.system.unregister_table(schema_name => 'sensor_events', table_name => 'silver')",
    ]
    for sql in refused:
        with pytest.raises(QueryError, match="Access Denied"):
            trino_client.execute(sql, role="analyst", settings=get_settings())
    # Nothing changed, and the admin still writes views.
    assert len(trino_client.query("SELECT 1 FROM sensor_events.merged LIMIT 1", settings=get_settings())) == 1

    # A wrong password is refused, named as such.
    wrong = get_settings().model_copy(update={"trino_analyst_password": "not-the-password"})
    with pytest.raises(ServiceError, match="refused the login"):
        trino_client.query("SELECT 1", settings=wrong, role="analyst")


def test_trino_takes_passwords_only_over_verified_https(demo):
    import base64
    import ssl
    import urllib.error
    import urllib.request

    from local_services import trino_security

    settings = get_settings()
    login = trino_security.credentials(settings, "analyst")
    token = base64.b64encode(f"{login.user}:{login.password}".encode()).decode()
    request = urllib.request.Request(f"http://127.0.0.1:{settings.trino_http_port}/v1/statement", data=b"SELECT 1",
                                     headers={"Authorization": f"Basic {token}", "X-Trino-User": login.user})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with pytest.raises(urllib.error.HTTPError) as refused:
        opener.open(request, timeout=10)
    assert refused.value.code in (401, 403)
    # Over HTTPS the certificate verifies against the local CA, and only against it.
    trusted = ssl.create_default_context(cafile=str(trino_security.ca_file(settings)))
    https = urllib.request.build_opener(urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=trusted))
    with https.open(f"{settings.trino_url}/v1/info", timeout=10) as response:
        assert response.status == 200
    untrusted = urllib.request.build_opener(urllib.request.ProxyHandler({}),
                                            urllib.request.HTTPSHandler(context=ssl.create_default_context()))
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
        untrusted.open(f"{settings.trino_url}/v1/info", timeout=10)


def test_eval_scores_the_merged_view_against_the_demo_labels(demo):
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "app.cli", "eval", "run", "-d", "sensor_events", "--labels", str(demo["files"]["labels"]), "--json"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    layers = demo["merged"].set_index("layer")["events"]
    assert figures["events"] == figures["scored_events"] == int(layers.sum())
    # The batch view rescored its rows with the model trained on them; speed rows came after it.
    assert figures["in_sample_rows"] == int(layers["batch"])
    # 4 sensors x 5 planted anomalies, each a window; the demo's 6 days hold them all.
    assert figures["windows"] == 20
    assert figures["window_recall"] >= 0.5 and 0 < figures["nab"]["standard"] <= 100
    # The declared quiet period's entry of the sweep is the alerts column itself.
    declared = figures["alert_quiet_events"]
    assert declared == 12
    assert figures["nab_standard_by_alert_quiet_events"][str(declared)] == figures["nab_with_own_flags"]["standard"]
    # The calibrated score, served by the merged view, at its own best threshold (one for every entity).
    assert set(figures["surprise_nab"]) == set(figures["nab"]) and 0 < figures["surprise_nab"]["standard"] <= 100
    assert figures["surprise_best_threshold"]["standard"] > 0
