"""Local services started by the project on loopback: Trino, Kafka and an S3 server."""
