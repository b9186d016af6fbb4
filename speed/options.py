"""The speed pipeline's options: its own flags beside Beam's, and what they imply."""

from __future__ import annotations

from apache_beam.options.pipeline_options import PipelineOptions

from lakehouse.settings import Settings


class SpeedOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser) -> None:
        # Not `required`: Beam parses every registered options class for any pipeline, so a
        # required flag here would break unrelated pipelines; run() (speed/pipeline.py) checks them
        # instead.
        parser.add_argument("--dataset", help="dataset declared in schemas/")
        parser.add_argument("--input", help="JSON-lines file or glob to replay")
        parser.add_argument("--kafka_topic", help="read this Kafka topic instead of --input")
        parser.add_argument("--kafka_bootstrap_servers", help="default: the local broker of `lakehouse up`")
        parser.add_argument("--kafka_group", help="consumer group whose offsets are committed (default lakehouse-speed-<dataset>)")
        parser.add_argument(
            # `--follow`, or `--follow=true|false` as a Flex Template passes parameters.
            "--follow", nargs="?", const=True, default=False, type=_flag,
            help="keep reading the Kafka topic until stopped (Ctrl-C or SIGTERM cancels the job)",
        )
        parser.add_argument(
            "--poll_seconds", type=float, default=1.0,
            help="with --follow on the in-process runner: pause between micro-batches that found nothing",
        )
        parser.add_argument(
            "--max_batch_size", type=int, default=5000,
            help="most events per batch read from a source (a Kafka poll, a replay's lines)",
        )
        parser.add_argument(
            "--commit_rows", type=int, default=50_000,
            help="bounded runs: most rows per Delta commit (a MERGE's cost grows with the table, not with the rows)",
        )
        parser.add_argument(
            "--state_shards", type=int, default=8,
            help="state keys the entities are spread over: an element of the stateful step is a shard's events of a batch",
        )
        parser.add_argument(
            "--commit_seconds", type=float, default=0.2,
            help="streaming: longest wait to fill a commit batch (one writer per table, no commit conflicts)",
        )
        parser.add_argument(
            # An event's first row is appended only when state says the table has none: state is
            # seeded with each entity's newest known rows, so rows a killed job committed before
            # its offsets moved are replays after the restart, upserted by key
            # (speed/stateful_features._seed; the SIGKILL follow test checks it).
            "--hot_appends", choices=("auto", "off"), default="auto",
            help="auto: a streaming job appends each event's first row to the hot table and MERGEs only revisions "
                 "and replays (faster commits); off: every commit is a MERGE",
        )
        parser.add_argument("--model_reload_seconds", type=float, default=30.0, help="how often to look for new models")
        parser.add_argument("--alerts_topic", help="publish anomalies to this Kafka topic (created if missing)")
        parser.add_argument(
            "--landing", choices=("auto", "on", "off"), default="auto",
            help="land valid events in the dataset's landing table for the batch layer (auto: when reading Kafka)",
        )
        parser.add_argument(
            "--state_ttl_seconds", type=float, default=86400.0,
            help="drop an entity's feature state after this long without events (0 keeps it forever)",
        )
        parser.add_argument("--metrics_port", type=int, default=0, help="serve Prometheus metrics on 127.0.0.1:PORT")
        parser.add_argument("--metrics_file", help="write Prometheus metrics to this file when the run ends")


class FlinkBundleOptions(PipelineOptions):
    """Flink's bundle limits, declared so that they reach the job server: the speed layer submits
    through Beam's PortableRunner (speed/pipeline.py), which drops options no registered class
    declares, and Flink then closed a bundle only after its default of 1,000 ms, the floor under
    the latency (measured: arrival-to-scored p50 1.9 s at 1,000 events/s)."""

    @classmethod
    def _add_argparse_args(cls, parser) -> None:
        parser.add_argument("--max_bundle_time_mills", type=int, help="Flink: longest a bundle stays open, in ms")
        parser.add_argument("--max_bundle_size", type=int, help="Flink: most elements in a bundle")


def _flag(text: str) -> bool:
    if text.lower() not in ("true", "false"):
        raise ValueError(f"expected true or false, got {text!r}")
    return text.lower() == "true"


def landing_enabled(options: SpeedOptions) -> bool:
    return options.landing == "on" or (options.landing == "auto" and bool(options.kafka_topic))


def kafka_bootstrap(options: SpeedOptions, settings: Settings) -> str:
    return options.kafka_bootstrap_servers or settings.kafka_bootstrap


def consumer_group(options: SpeedOptions) -> str:
    return options.kafka_group or f"lakehouse-speed-{options.dataset}"
