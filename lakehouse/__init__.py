"""Lambda-architecture lakehouse for anomaly detection: shared core (settings, constants, CLI)."""

__version__ = "0.1.0"
