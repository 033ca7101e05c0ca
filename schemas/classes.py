"""Classes of personal data the law guards more closely, marked as data on the fields holding them.

Two classes, wherever the field sits (not only in G7):

- **special category** (UK GDPR Art 9(1)): data concerning health (Art 4(15): physical or mental
  health, so pregnancy, injuries and the DASH answers on depression, mental health or substance
  use), racial or ethnic origin, religious or philosophical beliefs, sex life or sexual
  orientation. It leaves only with an Art 9(2) condition and its DPA 2018 Schedule 1 paragraph
  (s10(1)-(3)), or Schedule 8 for police law-enforcement processing under Part 3 (s35(5)).
- **criminal-offence data** (UK GDPR Art 10; DPA 2018 s11(2): the alleged or proven commission of
  offences, proceedings and sentences, and related security measures): bail conditions, court
  orders, criminal history, the DASH answers on breached bail and criminal history. Under the UK
  GDPR it leaves only with a condition in DPA 2018 Schedule 1 Part 1, 2 or 3 (s10(5)), e.g. para
  10 (preventing or detecting unlawful acts) or para 18 (safeguarding); police law-enforcement
  processing under Part 3 is outside Art 10 altogether.

A model field is classified by ``classified(DataClass...)`` in its ``json_schema_extra``, so the
exported JSON Schema carries the same mark (``"data_class": "special_category"``) for adapters
written in other languages; DASH questions carry it in the question-set data. ``model_classes``
reads the marks back; ``schemas.referral.field_classes`` and ``schemas.dash.
dash_question_classes`` are the per-group and per-question views the policy uses.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from enum import StrEnum
from types import MappingProxyType
from typing import Final

from pydantic import BaseModel
from pydantic.config import JsonDict

__all__ = ["DATA_CLASS_KEY", "DataClass", "classified", "model_classes"]

#: The JSON Schema keyword (and ``json_schema_extra`` key) that names a field's class.
DATA_CLASS_KEY: Final = "data_class"


class DataClass(StrEnum):
    """A class of personal data that may leave only with a matching legal condition."""

    SPECIAL_CATEGORY = "special_category"
    CRIMINAL_OFFENCE = "criminal_offence"

    @property
    def provision(self) -> str:
        """The provision that makes it a class of its own."""
        return _PROVISION[self]

    @property
    def condition(self) -> str:
        """What a lawful basis must carry before a field of this class may leave, in words."""
        return _CONDITION[self]


_PROVISION: Final = {
    DataClass.SPECIAL_CATEGORY: "UK GDPR Art 9(1), Art 4(15)",
    DataClass.CRIMINAL_OFFENCE: "UK GDPR Art 10; DPA 2018 s10(5), s11(2)",
}
_CONDITION: Final = {
    DataClass.SPECIAL_CATEGORY: "an Art 9 condition with its DPA 2018 Schedule 1 paragraph, "
    "or Schedule 8 for police Part 3 processing",
    DataClass.CRIMINAL_OFFENCE: "an Art 10 condition: a DPA 2018 Schedule 1 Part 1-3 paragraph "
    "(s10(5)), or police Part 3 processing (Schedule 8)",
}


def classified(data_class: DataClass) -> JsonDict:
    """The ``json_schema_extra`` that marks a field as holding data of ``data_class``.

    Only fields whose meaning is the class are marked; free text (a summary, a note) is not,
    because what it holds cannot be known from the schema.
    """
    return {DATA_CLASS_KEY: data_class.value}


@functools.cache  # models are classes fixed at import: their marks never change
def model_classes(model: type[BaseModel]) -> Mapping[str, DataClass]:
    """Field name -> its class, for the classified fields of ``model`` only, in field order."""
    out: dict[str, DataClass] = {}
    for name, info in model.model_fields.items():
        extra = info.json_schema_extra
        if isinstance(extra, dict) and isinstance(mark := extra.get(DATA_CLASS_KEY), str):
            out[name] = DataClass(mark)
    return MappingProxyType(out)
