"""Model registry: the `models` Delta table plus artifacts beside it in the warehouse.

Batch training appends one row per (dataset, entity) and version; every entity trained in a run
shares that run's version. The speed layer reads the newest version of each entity.

Stored under `model_artifacts/<dataset>/v<version>/`:
- `<entity_id>.pkl`, one a model: the pickled FittedModel (detector, scaler, threshold, training
  ids and scores), which every reader can score with; its URI is the row's `artifact_uri`.
- `numpy_forms.npz`, one a version (written since the numpy forms exist): the NeighbourForm of
  every model of the version that has one (exact KNN, the context detector;
  lakehouse/detectors.py), the arrays its scores come from. `load` takes a model's form from it
  when the form names the row's artifact, and unpickles the others (other detectors, versions
  written before it), so an old warehouse loads as it did.

Why one .npz a version rather than one file a model, or Arrow/Parquet: loading 1,000 models is
then one read and a few array slices instead of 1,000 unpickles, and the unpickling is what
imported PyOD, sklearn and numba into the speed layer (about 2.5 s of a replay's start-up,
docs/benchmarks.md). An .npz holds the float64 arrays as they are (no conversion from Arrow
lists), numpy alone reads it, and np.load(allow_pickle=False) runs no code from the file. The
models' arrays are concatenated (ragged: models differ in training points) with their sizes.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pandas as pd
import pyarrow as pa
from deltalake import write_deltalake

from lakehouse import constants, storage, system_tables
from lakehouse.detectors import FittedModel, NeighbourForm
from lakehouse.errors import ModelNotFoundError
from lakehouse.settings import Settings

@dataclass(frozen=True)
class RegisteredModel:
    dataset: str
    entity_id: str
    version: int
    model: FittedModel | NeighbourForm  # scored alike: score(features), relative(scores), threshold


def table_uri(settings: Settings) -> str:
    return settings.table_uri(constants.SYSTEM_SCHEMA, constants.MODELS)


def artifact_uri(settings: Settings, dataset: str, version: int, entity_id: str) -> str:
    return settings.table_uri(constants.SYSTEM_SCHEMA, f"model_artifacts/{dataset}/v{version:06d}/{entity_id}.pkl")


NUMPY_FORMS_FILE = "numpy_forms.npz"
# Bumped when the layout of the arrays below changes; a reader skips a file of another format
# (its models are then unpickled).
NUMPY_FORMS_FORMAT = 1


def numpy_forms_uri(artifact: str) -> str:
    """The numpy forms file of the version folder an artifact URI is in."""
    return f"{artifact.rsplit('/', 1)[0]}/{NUMPY_FORMS_FILE}"


def list_models(settings: Settings, dataset: str | None = None) -> pd.DataFrame:
    uri = table_uri(settings)
    if not storage.table_exists(uri):
        return system_tables.MODELS_SCHEMA.empty_table().to_pandas()
    frame = storage.open_table(uri).to_pandas()
    if dataset is not None:
        frame = frame[frame["dataset"] == dataset]
    return frame.sort_values(["dataset", "version", "entity_id"]).reset_index(drop=True)


def next_version(settings: Settings, dataset: str) -> int:
    models = list_models(settings, dataset)
    return 1 if models.empty else int(models["version"].max()) + 1


def register(settings: Settings, rows: list[dict]) -> None:
    """Append registry rows (artifacts must already be written to their artifact_uri)."""
    if not rows:
        return
    for row in rows:
        row["params"] = json.dumps(row.get("params") or {}, sort_keys=True)
        row["metrics"] = json.dumps(row.get("metrics") or {}, sort_keys=True)
        row["feature_names"] = json.dumps(row.get("feature_names") or [])
    table = pa.Table.from_pylist(rows, schema=system_tables.MODELS_SCHEMA)
    uri = table_uri(settings)
    write_deltalake(uri, table, mode="append", storage_options=storage.storage_options(uri))


def save_artifact(settings: Settings, dataset: str, version: int, entity_id: str, payload: bytes) -> str:
    """Store a serialised FittedModel (FittedModel.to_bytes) and return its URI."""
    uri = artifact_uri(settings, dataset, version, entity_id)
    storage.write_bytes(uri, payload)
    return uri


def save_numpy_forms(settings: Settings, dataset: str, version: int, forms: dict[str, tuple[str, NeighbourForm]]) -> str | None:
    """Store the numpy forms of a version's models, entity -> (its artifact URI, its form), in
    one file beside their artifacts (before the registry rows: a reader that sees a row finds
    the file complete); returns its URI, None when no model has a form."""
    if not forms:
        return None
    uri = numpy_forms_uri(artifact_uri(settings, dataset, version, "any"))
    storage.write_bytes(uri, pack_forms(forms))
    return uri


def pack_forms(forms: dict[str, tuple[str, NeighbourForm]]) -> bytes:
    """The .npz bytes of entity -> (artifact URI, NeighbourForm); see the module docstring."""
    entities = list(forms)
    items = [forms[entity][1] for entity in entities]
    contexts = [form for form in items if form.context]

    def joined(arrays: list[np.ndarray], dtype) -> np.ndarray:
        return np.concatenate([np.ravel(array) for array in arrays]).astype(dtype) if arrays else np.empty(0, dtype)

    arrays = {
        "format": np.array([NUMPY_FORMS_FORMAT], dtype=np.int64),
        "entity_id": np.array(entities, dtype=str),
        "artifact_uri": np.array([forms[entity][0] for entity in entities], dtype=str),
        "feature_names": np.array([json.dumps(form.feature_names) for form in items], dtype=str),
        "k": np.array([form.k for form in items], dtype=np.int64),
        "method": np.array([form.method for form in items], dtype=str),
        "threshold": np.array([form.threshold for form in items], dtype=np.float64),
        "train_score_mean": np.array([form.train_score_mean for form in items], dtype=np.float64),
        "contamination_threshold": np.array([form.contamination_threshold for form in items], dtype=np.float64),
        "features": np.array([form.features for form in items], dtype=np.int64),
        "width": np.array([form.training.shape[0] for form in items], dtype=np.int64),
        "points": np.array([form.training.shape[1] for form in items], dtype=np.int64),
        "context": np.array([form.context for form in items], dtype=bool),
        "training": joined([form.training for form in items], np.float64),
        "center": joined([form.center for form in items], np.float64),
        "scale": joined([form.scale for form in items], np.float64),
        "columns": joined([form.columns for form in contexts], np.int64),
        "inner_center": joined([form.inner_center for form in contexts], np.float64),
        "inner_scale": joined([form.inner_scale for form in contexts], np.float64),
        "weight": joined([form.weight for form in contexts], np.float64),
    }
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # uncompressed: float64 training points hardly compress, and load is the hot side
    return buffer.getvalue()


def unpack_forms(payload: bytes) -> dict[str, tuple[str, NeighbourForm]]:
    """entity -> (artifact URI, NeighbourForm) of a numpy forms file ({} for another format)."""
    with np.load(io.BytesIO(payload), allow_pickle=False) as stored:
        arrays = {name: stored[name] for name in stored.files}
    if "format" not in arrays or int(arrays["format"][0]) != NUMPY_FORMS_FORMAT:
        return {}

    def slices(sizes: np.ndarray) -> list[slice]:
        ends = np.cumsum(sizes)
        return [slice(int(end - size), int(end)) for size, end in zip(sizes, ends)]

    widths, points, features = arrays["width"], arrays["points"], arrays["features"]
    training = slices(widths * points)
    rows = slices(features)
    context_rows = iter(slices(widths[arrays["context"]]))
    forms = {}
    for index, entity in enumerate(arrays["entity_id"].tolist()):
        extra = {}
        if arrays["context"][index]:
            part = next(context_rows)
            extra = {name: arrays[name][part] for name in ("columns", "inner_center", "inner_scale", "weight")}
        forms[entity] = (str(arrays["artifact_uri"][index]), NeighbourForm(
            feature_names=json.loads(str(arrays["feature_names"][index])), k=int(arrays["k"][index]),
            method=str(arrays["method"][index]),
            training=arrays["training"][training[index]].reshape(int(widths[index]), int(points[index])),
            center=arrays["center"][rows[index]], scale=arrays["scale"][rows[index]],
            threshold=float(arrays["threshold"][index]), train_score_mean=float(arrays["train_score_mean"][index]),
            contamination_threshold=float(arrays["contamination_threshold"][index]), **extra,
        ))
    return forms


def succeeded_runs(settings: Settings) -> set[str]:
    """Run ids the run log lists as succeeded (batch/run_log.py writes it; read here as a table)."""
    uri = settings.table_uri(constants.SYSTEM_SCHEMA, constants.BATCH_RUNS)
    if not storage.table_exists(uri):
        return set()
    runs = storage.open_table(uri).to_pyarrow_table(columns=["run_id", "status"]).to_pandas()
    return set(runs.run_id[runs.status == system_tables.STATUS_SUCCEEDED])


def latest_versions(settings: Settings, dataset: str, *, own_run: str | None = None) -> pd.DataFrame:
    """The newest served registry row of each entity of a dataset.

    A model is served once the run that trained it succeeded: a run that fails or is killed after
    training is rolled back (batch/recovery.py), and what it trained on with it, so its models
    stay in the table (their versions are never reused) but no layer scores with them. `own_run`:
    the batch run scoring with the models it has just trained, before it is logged. Rows without a
    run id (registered by hand) are served.
    """
    models = list_models(settings, dataset)
    served = succeeded_runs(settings) | ({own_run} if own_run else set())
    models = models[models.run_id.isna() | models.run_id.isin(served)]
    if models.empty:
        raise ModelNotFoundError(
            f"no model registered for dataset {dataset!r}: run `lakehouse batch run --dataset {dataset}` first"
        )
    return models.sort_values("version").groupby("entity_id", as_index=False).tail(1)


def load_latest(settings: Settings, dataset: str, *, numpy_forms: bool = True) -> dict[str, RegisteredModel]:
    """entity_id -> its newest served model (see `load`)."""
    return load(latest_versions(settings, dataset), numpy_forms=numpy_forms)


def load(rows: pd.DataFrame, *, numpy_forms: bool = True) -> dict[str, RegisteredModel]:
    """entity_id -> the model of its registry row: its NeighbourForm from its version's numpy
    forms file when that holds one for the row's artifact (one read a version; no PyOD), else the
    FittedModel unpickled from its artifact. `numpy_forms=False`: the pickles alone."""
    loaded: dict[str, RegisteredModel] = {}
    files: dict[str, dict[str, tuple[str, NeighbourForm]]] = {}
    for row in rows.itertuples():
        model = None
        if numpy_forms:
            uri = numpy_forms_uri(row.artifact_uri)
            if uri not in files:
                payload = storage.read_bytes_if_exists(uri)
                files[uri] = unpack_forms(payload) if payload is not None else {}
            artifact, form = files[uri].get(row.entity_id, (None, None))
            # Only the form taken from this row's own artifact (a row registered by hand may name another).
            if artifact == row.artifact_uri:
                model = form
        if model is None:
            model = FittedModel.from_bytes(storage.read_bytes(row.artifact_uri))
        loaded[row.entity_id] = RegisteredModel(row.dataset, row.entity_id, int(row.version), model)
    return loaded


def registry_version(settings: Settings) -> tuple[int, int | None] | None:
    """(models table's Delta version, run log's): cheap to poll, changes when a model is
    registered or a run that trained one succeeds (which is when its models are served)."""
    uri = table_uri(settings)
    if not storage.table_exists(uri):
        return None
    runs = settings.table_uri(constants.SYSTEM_SCHEMA, constants.BATCH_RUNS)
    return storage.open_table(uri).version(), storage.open_table(runs).version() if storage.table_exists(runs) else None


def now_utc() -> datetime:
    from datetime import timezone

    return datetime.now(timezone.utc)
