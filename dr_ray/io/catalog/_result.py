"""What a catalog reader returns: the table and the label problems met while building it.

:class:`LabelProblem` records one label defect (file, line, reason); problems are reported, never fatal.
:class:`CatalogResult` pairs a ``CATALOG_SCHEMA`` table with its problems and says whether its folds
can be patient-level. Shared by every reader and by the Parquet writer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa


@dataclass(frozen=True)
class LabelProblem:
    """One label defect found while reading a dataset. Problems are reported, never fatal.

    file: the label CSV (or image/mask folder) the problem is about, as a full path or URI.
    line: 1-based line number in ``file`` (the header is line 1); 0 when not tied to a line.
    reason: what is wrong, e.g. ``"grade 'x' is not an integer 0-4"``.
    """

    file: str
    line: int
    reason: str


@dataclass
class CatalogResult:
    """A catalog table (``CATALOG_SCHEMA``) and the label problems met while building it.

    Rows named in ``problems`` with a line number were left out of ``table``; folder-level problems
    (line 0) describe a missing mask or unlabelled images and say in their reason what was done.
    """

    table: pa.Table
    problems: list[LabelProblem] = field(default_factory=list)

    @property
    def patient_level(self) -> bool:
        """True when every row has a known patient (``patient_id`` is not the image's own id): folds drawn from
        this table keep all images of a person together. False for APTOS, IDRiD, FGADR, and Messidor-2 without
        its exam pairing; :func:`dr_ray.io.folds.patient_level` gives the counts, which CV outputs record."""
        from dr_ray.io.folds import images_without_patient

        return images_without_patient(self.table) == 0
