"""Subsets spelt out: which fields, entries and DASH topics a granted group or subset holds.

Pure. ``explain_share`` takes one ``GroupShare`` of a decision and the agreement it was granted
under, and says in full what it is: the group and its name, the fields kept (every field of the
group when it is whole), the scope (which entries: own pupils, children with no school, the
recipient's own agency), the DASH question topics whose answers it keeps, and the agreement's
note, so an IG officer reads what ``G6.level_only`` or ``G4.own_pupil`` actually holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from broker.policy.agreements import Agreement
from schemas.disclosure import GroupShare
from schemas.legal import GROUP_NAMES, SCOPE_WORDS
from schemas.referral import GROUP_MODELS

__all__ = ["ShareText", "explain_share"]


@dataclass(frozen=True)
class ShareText:
    """What a granted group or subset holds, from the agreement it was granted under."""

    label: str
    group: str
    group_name: str
    subset: str | None
    fields: tuple[str, ...]  # the fields kept; every field of the group when whole
    scope: str | None
    scope_text: str | None
    dash_topics: tuple[str, ...]
    note: str | None

    def as_record(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "group": self.group,
            "group_name": self.group_name,
            "subset": self.subset,
            "fields": list(self.fields),
            "scope": self.scope,
            "scope_text": self.scope_text,
            "dash_topics": list(self.dash_topics),
            "note": self.note,
        }


def explain_share(share: GroupShare, agreement: Agreement | None = None) -> ShareText:
    """Spell out ``share``: its fields, scope and DASH topics, and the agreement's note."""
    note = None
    if share.subset is not None and agreement is not None:
        subset = agreement.subsets.get(share.group, {}).get(share.subset)
        note = subset.note if subset is not None else None
    fields = (
        share.fields if share.subset is not None else tuple(GROUP_MODELS[share.group].model_fields)
    )
    return ShareText(
        label=share.label,
        group=share.group.value,
        group_name=GROUP_NAMES[share.group],
        subset=share.subset,
        fields=fields,
        scope=share.scope.value if share.scope is not None else None,
        scope_text=SCOPE_WORDS[share.scope] if share.scope is not None else None,
        dash_topics=share.dash_topics,
        note=note,
    )
