"""Region label values of the mask files (``ROOT/masks/<class>/<id>.png``)."""

from __future__ import annotations

BACKGROUND = 0
RED_CELL = 1
PLATELET = 2
CYTOPLASM = 3  # WBC cytoplasm
NUCLEUS = 4  # WBC nucleus
GRANULES = 5  # WBC granules (eosinophil, basophil, neutrophil)

LABELS: dict[int, str] = {
    BACKGROUND: "background",
    RED_CELL: "red_cell",
    PLATELET: "platelet",
    CYTOPLASM: "cytoplasm",
    NUCLEUS: "nucleus",
    GRANULES: "granules",
}
#: Labels that together make up the white blood cell.
WBC_LABELS: tuple[int, ...] = (CYTOPLASM, NUCLEUS, GRANULES)
MAX_LABEL = max(LABELS)
