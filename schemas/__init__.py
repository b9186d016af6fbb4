"""Dataset declarations: each dataset is declared once in schemas/<name>.yaml."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from lakehouse.errors import ConfigurationError
from schemas.declaration import Dataset, FieldSpec, load_dataset_file

__all__ = ["Dataset", "FieldSpec", "available", "load"]

DECLARATIONS = Path(__file__).parent


def available() -> list[str]:
    return sorted(path.stem for path in DECLARATIONS.glob("*.yaml"))


@lru_cache(maxsize=None)
def load(name: str) -> Dataset:
    path = DECLARATIONS / f"{name}.yaml"
    if not path.exists():
        raise ConfigurationError(f"unknown dataset {name!r}; declared: {', '.join(available())}")
    dataset = load_dataset_file(path)
    if dataset.name != name:
        raise ConfigurationError(f"{path}: declares name {dataset.name!r}, expected {name!r}")
    return dataset
