"""The manifest: the one description of a dataset that the rest of fusionsearch consumes.

A table (CSV or Parquet) with one row per sample:

==============  ==============================================================
``sample_id``   unique id of the sample (e.g. ``sub-00001`` or ``sub-X_ses-Y``)
``subject_id``  the subject; samples of one subject never straddle splits
``label``       class index, ``0 .. num_classes-1``
``session_id``  optional
any other       one column per modality (e.g. ``T1w``, ``FLAIR``): the image
                path, relative to the manifest's folder or absolute
==============  ==============================================================
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from fusionsearch.errors import DataError

SAMPLE, SUBJECT, LABEL, SESSION = "sample_id", "subject_id", "label", "session_id"
RESERVED = (SAMPLE, SUBJECT, LABEL, SESSION)


@dataclass(frozen=True)
class Manifest:
    """A dataset: the manifest table and the folder its relative paths resolve against."""

    table: pa.Table
    root: Path

    @property
    def modalities(self) -> list[str]:
        """The modality columns, in table order."""
        return [name for name in self.table.column_names if name not in RESERVED]

    @property
    def sample_ids(self) -> list[str]:
        return self.table[SAMPLE].to_pylist()

    @property
    def subjects(self) -> list[str]:
        return self.table[SUBJECT].to_pylist()

    @property
    def labels(self) -> list:
        return self.table[LABEL].to_pylist()

    def __len__(self) -> int:
        return self.table.num_rows

    def paths(self, row: int) -> dict[str, Path]:
        """The image path of every modality of sample ``row``, resolved against the root."""
        return {m: self.root / str(self.table[m][row].as_py()) for m in self.modalities}

    def select_modalities(self, modalities: list[str]) -> Manifest:
        """This manifest restricted to ``modalities``, in that order (e.g. one for a unimodal baseline)."""
        missing = [m for m in modalities if m not in self.modalities]
        if missing:
            raise DataError(f"modalities {missing} are not columns of the manifest; it has {self.modalities}")
        keep = [c for c in self.table.column_names if c in RESERVED] + modalities
        return Manifest(self.table.select(keep), self.root)

    def take(self, rows: list[int]) -> Manifest:
        return Manifest(self.table.take(pa.array(rows, pa.int64())), self.root)


def read_manifest(path: str | os.PathLike, *, labelled: bool = True) -> Manifest:
    """Read a CSV or Parquet manifest; structural problems are a :class:`DataError`.

    ``labelled=False`` (new subjects to predict): ``label`` and ``subject_id`` may be left out; a
    missing ``label`` column reads as unknown labels, a missing ``subject_id`` as the sample's id.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"manifest {path} does not exist; write one with 'fusionsearch data import-bids' "
            "or 'fusionsearch synth', or pass the path of an existing CSV/Parquet manifest"
        )
    try:
        table = (
            pq.read_table(path)
            if path.suffix == ".parquet"
            else read_text_table(path, infer=(LABEL,), null_values=[""])
        )
    except (pa.ArrowInvalid, OSError, UnicodeDecodeError) as error:
        raise DataError(f"manifest {path} is not a readable CSV/Parquet table: {error}") from None
    if not labelled and SAMPLE in table.column_names:
        if LABEL not in table.column_names:
            table = table.append_column(LABEL, pa.nulls(table.num_rows, pa.int64()))
        if SUBJECT not in table.column_names:
            table = table.append_column(SUBJECT, table[SAMPLE])
    missing = [c for c in (SAMPLE, SUBJECT, LABEL) if c not in table.column_names]
    manifest = Manifest(table, path.parent.resolve())
    if missing or not manifest.modalities:
        raise DataError(
            f"manifest {path} lacks required columns: {missing or 'a modality column'}; it needs "
            f"{SAMPLE}, {SUBJECT}, {LABEL} and one image-path column per modality "
            f"(it has {table.column_names})"
        )
    return manifest


def read_text_table(
    path: Path, *, delimiter: str = ",", infer: tuple[str, ...] = (), null_values: list[str] | None = None
) -> pa.Table:
    """Read a CSV/TSV with every column as text except ``infer``, so ids like 00001 keep their zeros."""
    with path.open(newline="") as f:
        header = next(csv.reader(f, delimiter=delimiter), [])
    options = pacsv.ConvertOptions(
        column_types={c: pa.string() for c in header if c not in infer},
        strings_can_be_null=null_values is not None,
        **({"null_values": null_values} if null_values is not None else {}),
    )
    return pacsv.read_csv(
        path, parse_options=pacsv.ParseOptions(delimiter=delimiter), convert_options=options
    )


def write_manifest(table: pa.Table, path: str | os.PathLike) -> Path:
    """Write ``table`` as CSV, or Parquet when ``path`` ends in ``.parquet``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        pq.write_table(table, path)
    else:
        pacsv.write_csv(table, path)
    return path


def class_counts(manifest: Manifest) -> dict:
    """Number of samples per label value."""
    counts = pc.value_counts(manifest.table[LABEL]).to_pylist()
    return {c["values"]: c["counts"] for c in sorted(counts, key=lambda c: str(c["values"]))}
