"""Canonical cell classes (PBC's eight) and the aliases that map to them."""

from __future__ import annotations

from ..errors import DatasetError

CLASSES: tuple[str, ...] = (
    "basophil",
    "eosinophil",
    "erythroblast",
    "ig",
    "lymphocyte",
    "monocyte",
    "neutrophil",
    "platelet",
)

#: The five white-blood-cell types common to most differential counts.
MAIN_WBC: tuple[str, ...] = ("basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil")

# Aliases are matched after lower-casing and stripping; PBC file prefixes are included
# (SNE segmented / BNE band neutrophil; MMY, MY, PMY metamyelocyte, myelocyte, promyelocyte).
_ALIASES: dict[str, str] = {
    "basophils": "basophil", "ba": "basophil", "baso": "basophil",
    "eosinophils": "eosinophil", "eo": "eosinophil", "eos": "eosinophil",
    "erythroblasts": "erythroblast", "erb": "erythroblast", "nrbc": "erythroblast",
    "immature granulocyte": "ig", "immature_granulocyte": "ig", "immature-granulocyte": "ig",
    "immature granulocytes": "ig", "immature_granulocytes": "ig", "igs": "ig",
    "mmy": "ig", "my": "ig", "pmy": "ig", "metamyelocyte": "ig", "myelocyte": "ig", "promyelocyte": "ig",
    "lymphocytes": "lymphocyte", "ly": "lymphocyte", "lym": "lymphocyte", "lymph": "lymphocyte",
    "monocytes": "monocyte", "mo": "monocyte", "mon": "monocyte", "mono": "monocyte",
    "neutrophils": "neutrophil", "ne": "neutrophil", "sne": "neutrophil", "bne": "neutrophil",
    "neut": "neutrophil", "seg": "neutrophil", "band": "neutrophil",
    "platelets": "platelet", "plt": "platelet", "thrombocyte": "platelet", "thrombocytes": "platelet",
}


def canonical_class(name: str, *, source: str = "") -> str:
    """Map a class name or alias (``"Neutrophils"``, ``"SNE"``, ``"MMY"``) to its canonical key.

    Raises
    ------
    DatasetError
        For an unknown name; the message lists the known classes.
    """
    key = name.strip().lower()
    if key in CLASSES:
        return key
    if key in _ALIASES:
        return _ALIASES[key]
    where = f"{source}: " if source else ""
    raise DatasetError(
        f"{where}unknown cell class {name!r}. Known classes: {', '.join(CLASSES)} "
        "(aliases such as plural forms, NE/SNE/BNE, IG, MMY/MY/PMY are accepted); rename the folder"
    )


def is_known_class(name: str) -> bool:
    try:
        canonical_class(name)
    except DatasetError:
        return False
    return True
