"""The Parquet tables of a dataset job: one results file and one errors file per shard, written atomically.

Results columns: ``input_id``, ``shard``, ``source`` / ``source_name``, ``target`` / ``target_name``,
``score`` (``S_source - S_target`` at the input), ``baseline_score``, ``delta`` (the completeness
error ``sum(attributions) - (score - baseline_score)``; null for methods that are not complete),
``method``, ``baseline``, ``bundle_sha256``, ``attributions`` (the map flattened, float32) and
``attribution_shape`` (to restore it: ``np.reshape(row["attributions"], row["attribution_shape"])``).
Errors columns: ``input_id``, ``shard``, ``stage`` ("read" or "explain") and ``reason``.

A shard is finished when its results file exists: the errors file is written first, and every
file goes live by an atomic rename, so a worker killed at any point leaves either nothing or a
whole file, and redoing the shard replaces it instead of adding rows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from xaisdk.runtime.atomic_files import atomic_file

__all__ = ["ERRORS", "RESULTS", "read_results", "results_path", "errors_path", "write_table"]

RESULTS = "results"
ERRORS = "errors"


def results_path(out: Path, shard_id: str) -> Path:
    return Path(out) / RESULTS / f"{shard_id}.parquet"


def errors_path(out: Path, shard_id: str) -> Path:
    return Path(out) / ERRORS / f"{shard_id}.parquet"


def _schema(kind: str) -> Any:
    import pyarrow as pa

    if kind == ERRORS:
        return pa.schema([("input_id", pa.string()), ("shard", pa.string()), ("stage", pa.string()),
                          ("reason", pa.string())])
    return pa.schema([
        ("input_id", pa.string()), ("shard", pa.string()),
        ("source", pa.int64()), ("source_name", pa.string()), ("target", pa.int64()), ("target_name", pa.string()),
        ("score", pa.float64()), ("baseline_score", pa.float64()), ("delta", pa.float64()),
        ("method", pa.string()), ("baseline", pa.string()), ("bundle_sha256", pa.string()),
        ("attributions", pa.list_(pa.float32())), ("attribution_shape", pa.list_(pa.int32())),
    ])


def write_table(path: Path, kind: str, columns: dict[str, list]) -> Path:
    """Write ``columns`` (name -> one value per row) as ``path`` with the ``kind`` schema, atomically.

    >>> import tempfile
    >>> out = Path(tempfile.mkdtemp()) / "e.parquet"
    >>> _ = write_table(out, ERRORS, {"input_id": ["a.png"], "shard": ["s"], "stage": ["read"], "reason": ["broken"]})
    >>> import pyarrow.parquet as pq; pq.read_table(out).to_pylist()[0]["reason"]
    'broken'
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = _schema(kind)
    arrays = []
    for field in schema:
        values = columns[field.name]
        if field.name == "attributions":  # one flat float32 buffer: no per-element Python objects
            flat = np.concatenate([np.asarray(v, np.float32).ravel() for v in values]) if values else np.zeros(0, np.float32)
            offsets = np.concatenate([[0], np.cumsum([np.size(v) for v in values])]).astype(np.int32)
            arrays.append(pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat, pa.float32())))
        else:
            arrays.append(pa.array(values, field.type))
    table = pa.Table.from_arrays(arrays, schema=schema)
    with atomic_file(path) as handle:
        pq.write_table(table, handle)
    return Path(path)


def read_results(out: Path, kind: str = RESULTS) -> Any:
    """All rows of a job's results (or errors) as one pyarrow Table, shards in name order."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = sorted((Path(out) / kind).glob("*.parquet"))
    tables = [pq.read_table(f) for f in files]
    return pa.concat_tables(tables) if tables else _schema(kind).empty_table()
