"""Local services started by the project on loopback: Trino, Kafka, an S3 server and a Flink job server."""
