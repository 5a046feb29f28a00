"""`mtpano import`: public datasets' ground truth as label stores of kind "ground_truth".

One small reader per layout (`base.DatasetReader`: find the panoramas of a folder and of a
split, read one panorama into our conventions) and one generic writer
(`writer.import_dataset`). docs/datasets.md describes every format: layout, units, invalid
values, classes, normals frame, splits and their sources, and what could not be confirmed.
"""

from __future__ import annotations

from storage.importers.base import DatasetError, DatasetReader, UsageError
from storage.importers.matterport3d import Matterport3DReader
from storage.importers.replica import ReplicaReader
from storage.importers.stanford2d3d import Stanford2D3DReader
from storage.importers.structured3d import Structured3DReader
from storage.importers.synth import SynthReader
from storage.importers.writer import ImportConfig, ImportSummary, import_dataset

# --format values, in the order `mtpano import --help` lists them.
FORMATS: dict[str, type[DatasetReader]] = {
    reader.name: reader
    for reader in (SynthReader, Stanford2D3DReader, Structured3DReader, Matterport3DReader, ReplicaReader)
}

__all__ = ["FORMATS", "DatasetError", "DatasetReader", "ImportConfig", "ImportSummary", "UsageError", "import_dataset"]
