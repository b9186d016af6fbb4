"""Local services started by the project on loopback: Trino and Kafka."""
