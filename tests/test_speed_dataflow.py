"""The Dataflow deployment: its options and Flex Template spec, checked without Google Cloud.

Dataflow cannot run here (no cloud account, no network): this is the fake at that boundary. The
test builds the real pipeline graph with the Dataflow options of README's deployment section,
lets Beam's own validator check those options, and checks that the Flex Template's parameters
are exactly flags the pipeline accepts.
"""

from __future__ import annotations

import json
from pathlib import Path

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.options.pipeline_options_validator import PipelineOptionsValidator

from speed.graph import build
from speed.options import SpeedOptions

INFRA = Path(__file__).resolve().parents[1] / "infra" / "dataflow"

DATAFLOW_ARGS = [
    "--runner=DataflowRunner",
    "--project=lakehouse-prod",
    "--region=europe-west1",
    "--temp_location=gs://lakehouse-dataflow/tmp",
    "--staging_location=gs://lakehouse-dataflow/staging",
    "--streaming",
    "--enable_streaming_engine",
    "--sdk_container_image=europe-docker.pkg.dev/lakehouse-prod/images/lakehouse-speed:latest",
    "--max_num_workers=4",
]


def test_dataflow_options_validate_and_build_the_pipeline(tmp_path):
    from apache_beam.runners.dataflow.dataflow_runner import DataflowRunner

    from lakehouse.settings import get_settings

    replay = tmp_path / "events.jsonl"
    replay.write_text("")
    options = PipelineOptions([*DATAFLOW_ARGS, "--dataset=sensor_events", f"--input={replay}"])
    assert PipelineOptionsValidator(options, DataflowRunner()).validate() == []
    assert options.view_as(StandardOptions).streaming

    pipeline = beam.Pipeline(runner=DataflowRunner(), options=options)
    build(pipeline, options.view_as(SpeedOptions), get_settings())
    names = {transform.unique_name for transform in pipeline.to_runner_api().components.transforms.values()}
    for step in ("ScoreEvents/ParseAndValidate", "ScoreEvents/ScoreShard", "UpsertHotScores", "WriteDeadLetters"):
        assert any(name.startswith(step) for name in names), step

    # Following Kafka (the template's streaming job): the unbounded reader and the offset commits.
    from speed.kafka_source import PartitionRange

    following = PipelineOptions([*DATAFLOW_ARGS, "--dataset=sensor_events", "--kafka_topic=events", "--follow=true",
                                 "--kafka_bootstrap_servers=kafka-0.internal:9092"])
    assert following.view_as(SpeedOptions).follow is True
    pipeline = beam.Pipeline(runner=DataflowRunner(), options=following)
    starts = [PartitionRange("events", partition, 0, 0) for partition in range(3)]
    build(pipeline, following.view_as(SpeedOptions), get_settings(), starts, unbounded=True)
    names = {transform.unique_name for transform in pipeline.to_runner_api().components.transforms.values()}
    for step in ("FollowKafka/FollowPartitions", "CommitOffsets/CommitFrontier", "WriteLanding"):
        assert any(name.startswith(step) for name in names), step

    # A wrong option is caught by the same validator.
    broken = PipelineOptions(["--runner=DataflowRunner", "--project=Not A Project", "--region=europe-west1", "--temp_location=/tmp"])
    assert len(PipelineOptionsValidator(broken, DataflowRunner()).validate()) >= 2


def test_flex_template_parameters_are_pipeline_flags():
    metadata = json.loads((INFRA / "metadata.json").read_text())
    parser_flags = set()

    class Recorder:
        def add_argument(self, flag, **kwargs):
            parser_flags.add(flag.lstrip("-"))

    SpeedOptions._add_argparse_args(Recorder())
    parameters = {parameter["name"] for parameter in metadata["parameters"]}
    assert parameters <= parser_flags, parameters - parser_flags
    required = {parameter["name"] for parameter in metadata["parameters"] if not parameter.get("isOptional")}
    assert {"dataset", "kafka_topic", "kafka_bootstrap_servers"} <= required
    dockerfile = (INFRA / "Dockerfile").read_text()
    assert "FLEX_TEMPLATE_PYTHON_PY_FILE=/template/speed/pipeline.py" in dockerfile
    assert (Path(__file__).resolve().parents[1] / "speed" / "pipeline.py").exists()
