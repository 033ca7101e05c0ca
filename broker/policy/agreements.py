"""Information-sharing agreements as data: the models, and the YAML loader.

One YAML file per agreement under ``<federation_dir>/agreements/`` (the file is named after the
agreement's id). An agreement names its parties and their roles, its retention, the subsets of
field groups it shares, and per purpose: the lawful bases it may rely on, the consent states and
override reasons it accepts, whether a MARAC criterion must be met, and for each recipient role
the field groups it may receive, each whole (``full``) or as a named subset. Operation Encompass
terms also name the basis per recipient role (s49A for a school; the safeguarding basis for
children's social care, which s49A does not cover) and the age under which a person is a child
(``child_age_under``, the statutory 18 unless an agreement narrows it, which the linter flags).

A subset is concrete data, so an IG officer reads exactly what "limited" means: the fields of
the group it keeps, and optionally a scope (``own_pupil``: only the children at the recipient
school; ``home_educated``: only the children on no school roll; both keep children under the
terms' ``child_age_under`` only; ``own_agency``: only G9 entries naming the recipient) or, for G6,
the DASH topics whose answers it keeps. ``Agreement`` validation catches what one file alone can
get wrong (unknown groups, roles, fields, subsets); ``broker.policy.lint.check`` lints them against
the federation (unknown or mis-roled parties, purposes with no lawful basis, contradictory
rules, a special-category or criminal-offence field granted for a purpose none of whose bases
carries its condition). Loading is the only I/O here; the policy engine takes the loaded,
immutable models.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from datetime import date
from pathlib import Path
from types import MappingProxyType
from typing import Final

import yaml
from pydantic import Field, ValidationError, model_validator

from schemas.consent import ConsentState, OverrideReason
from schemas.dash import known_question_sets, question_set
from schemas.decode import field_problems
from schemas.disclosure import (
    AgreementId,
    GroupShare,
    LawfulBasis,
    Retention,
    ShareScope,
    SubsetName,
)
from schemas.encompass import CHILD_AGE_UNDER
from schemas.errors import FieldProblem, SchemaError
from schemas.federation import AgencyRole
from schemas.fields import AgencyId, Frozen, LongText, ShortText, inconsistent
from schemas.referral import GROUP_MODELS, FieldGroup, Purpose

__all__ = [
    "AGREEMENTS_DIR",
    "ENCOMPASS_CONTENT",
    "FULL",
    "Agreement",
    "ConsentTerms",
    "Party",
    "PurposeTerms",
    "Subset",
    "agreement_files",
    "load_agreement",
    "load_agreements",
]

#: The agreements' folder inside the federation folder.
AGREEMENTS_DIR: Final = "agreements"
#: The access level that grants a whole group.
FULL: Final = "full"

_SCOPE_GROUP: Final = {
    ShareScope.OWN_PUPIL: FieldGroup.G4,
    ShareScope.HOME_EDUCATED: FieldGroup.G4,
    ShareScope.OWN_AGENCY: FieldGroup.G9,
}

#: The most an Operation Encompass grant may carry per group (s49A statutory content; G0 is
#: routing metadata with no personal data, G8 only the legal codes).
ENCOMPASS_CONTENT: Final[Mapping[FieldGroup, frozenset[str] | None]] = MappingProxyType(
    {
        FieldGroup.G0: None,  # any header field
        FieldGroup.G4: frozenset(
            {
                "given_name",
                "family_name",
                "date_of_birth",
                "school_agency",
                "home_educated",
                "present_at_incident",
                "where",
                "voice_of_child",
            }
        ),
        FieldGroup.G5: frozenset({"occurred_at", "location", "summary"}),
        FieldGroup.G8: frozenset(
            {"art6_basis", "art9_condition", "dpa_condition", "statutory_gateway"}
        ),
    }
)


@functools.cache  # the question sets are package data: they do not change while running
def _dash_topics() -> frozenset[str]:
    return frozenset(q.topic for v in known_question_sets() for q in question_set(v).questions)


class Party(Frozen):
    """An agency that signed the agreement, in the role it signed in."""

    agency: AgencyId
    role: AgencyRole


class Subset(Frozen):
    """A named part of one field group: the fields kept, and which entries (scope)."""

    fields: tuple[str, ...] = Field(min_length=1)
    scope: ShareScope | None = None
    dash_topics: tuple[str, ...] = Field(
        default=(), description="G6 only: keep the DASH answers of these question topics"
    )
    note: LongText = Field(description="What the subset is for, in words an IG officer reads")


class ConsentTerms(Frozen):
    """Which consent states the agreement accepts, and which override reasons."""

    states: tuple[ConsentState, ...] = Field(min_length=1)
    override_reasons: tuple[OverrideReason, ...] = ()


class PurposeTerms(Frozen):
    """What the agreement allows for one purpose."""

    purpose: Purpose
    lawful_bases: tuple[LawfulBasis, ...] = Field(
        default=(),
        description="Any one of them, named in the referral's G8, makes it lawful (not for "
        "ENCOMPASS, whose basis is per recipient role: notification_basis)",
    )
    notification_basis: Mapping[AgencyRole, LawfulBasis] = Field(
        default_factory=dict,
        description="ENCOMPASS only: per recipient role, the basis a notice (or an Encompass "
        "referral) to that role relies on: DAA 2021 s49A for a school; for children's social "
        "care, notified of a child on no school roll, the safeguarding basis (Art 6(1)(e), Art "
        "9(2)(g), DPA 2018 Sch 1 para 18, Children Act 2004 s11), since s49A names schools",
    )
    child_age_under: int = Field(
        default=CHILD_AGE_UNDER,
        ge=1,
        le=CHILD_AGE_UNDER,
        description="The G4 scopes own_pupil and home_educated keep, and Operation Encompass "
        "notifies, only people under this age on the incident date; the statute says 18 (DAA "
        "2021 s3), and no agreement may go beyond it",
    )
    consent: ConsentTerms
    marac_criterion_required: bool = False
    recipients: Mapping[AgencyRole, Mapping[FieldGroup, str]] = Field(
        description="Role -> group -> 'full' or a subset name of that group"
    )


class Agreement(Frozen):
    """One information-sharing agreement, as signed by its parties."""

    id: AgreementId
    title: ShortText
    version: ShortText
    in_force_from: date
    in_force_until: date | None = None
    # The sizes are checked below rather than with min_length, which would add a misleading
    # "too short" error whenever one entry is invalid.
    parties: tuple[Party, ...]
    retention: Retention
    subsets: Mapping[FieldGroup, Mapping[SubsetName, Subset]] = Field(default_factory=dict)
    purposes: tuple[PurposeTerms, ...]

    @model_validator(mode="after")
    def _consistent(self) -> Agreement:
        if len(self.parties) < 2:
            raise inconsistent("parties", "an agreement has at least two parties")
        if not self.purposes:
            raise inconsistent("purposes", "an agreement covers at least one purpose")
        agencies = [p.agency for p in self.parties]
        if len(agencies) != len(set(agencies)):
            raise inconsistent("parties", "each agency is a party once")
        purposes = [t.purpose for t in self.purposes]
        if len(purposes) != len(set(purposes)):
            raise inconsistent("purposes", "each purpose has one set of terms")
        if self.in_force_until is not None and self.in_force_until < self.in_force_from:
            raise inconsistent("in_force_until", "an agreement ends after it starts")
        topics = _dash_topics()
        for group, named in self.subsets.items():
            fields = GROUP_MODELS[group].model_fields
            for name, subset in named.items():
                at = f"subsets.{group.value}.{name}"
                if name == FULL:
                    raise inconsistent(at, f"'{FULL}' means the whole group; name it otherwise")
                unknown = [f for f in subset.fields if f not in fields]
                if unknown:
                    raise inconsistent(
                        f"{at}.fields",
                        f"{', '.join(unknown)} not a field of {group.value} "
                        f"({GROUP_MODELS[group].__name__}: {', '.join(fields)})",
                    )
                if subset.scope is not None and _SCOPE_GROUP[subset.scope] is not group:
                    raise inconsistent(
                        f"{at}.scope",
                        f"scope {subset.scope.value} applies to "
                        f"{_SCOPE_GROUP[subset.scope].value} only",
                    )
                if subset.dash_topics and (
                    group is not FieldGroup.G6 or "dash" not in subset.fields
                ):
                    raise inconsistent(
                        f"{at}.dash_topics", "dash_topics belong to a G6 subset that keeps 'dash'"
                    )
                odd = [t for t in subset.dash_topics if t not in topics]
                if odd:
                    raise inconsistent(
                        f"{at}.dash_topics", f"{', '.join(odd)} not a DASH question topic"
                    )
        for i, terms in enumerate(self.purposes):
            for role, grant in terms.recipients.items():
                at = f"purposes.{i}.recipients.{role.value}"
                if FieldGroup.G0 not in grant:
                    raise inconsistent(
                        at, "grant G0 (whole or a subset): a disclosure needs its header"
                    )
                for group, access in grant.items():
                    if access != FULL and access not in self.subsets.get(group, {}):
                        raise inconsistent(
                            f"{at}.{group.value}",
                            f"'{access}' is neither '{FULL}' nor a subset defined under "
                            f"subsets.{group.value}",
                        )
        return self

    def terms(self, purpose: Purpose) -> PurposeTerms | None:
        """The terms for ``purpose``, if the agreement covers it."""
        return next((t for t in self.purposes if t.purpose is purpose), None)

    def party(self, agency: str) -> Party | None:
        return next((p for p in self.parties if p.agency == agency), None)

    def in_force(self, day: date) -> bool:
        until = self.in_force_until
        return self.in_force_from <= day and (until is None or day <= until)

    def share(self, group: FieldGroup, access: str) -> GroupShare:
        """The disclosed form of one grant entry: the whole group, or the subset spelt out."""
        if access == FULL:
            return GroupShare(group=group)
        subset = self.subsets[group][access]
        return GroupShare(
            group=group,
            subset=access,
            fields=subset.fields,
            dash_topics=subset.dash_topics,
            scope=subset.scope,
        )

    def grant(self, purpose: Purpose, role: AgencyRole) -> tuple[GroupShare, ...] | None:
        """What ``role`` may receive for ``purpose``, in group order; None: nothing granted.

        Worked out once per agreement object, purpose and role (``_GRANTS``): the decision of
        every referral asks it for each recipient, and the answer is made of frozen models."""
        held = _GRANTS.get(id(self))
        if held is None or held[0] is not self:
            if len(_GRANTS) >= _MAX_GRANTS_HELD:
                _GRANTS.clear()
            held = (self, {})
            _GRANTS[id(self)] = held
        key = (purpose, role)
        if key not in held[1]:
            held[1][key] = self._grant(purpose, role)
        return held[1][key]

    def _grant(self, purpose: Purpose, role: AgencyRole) -> tuple[GroupShare, ...] | None:
        terms = self.terms(purpose)
        if terms is None or role not in terms.recipients:
            return None
        granted = terms.recipients[role]
        return tuple(self.share(g, granted[g]) for g in FieldGroup if g in granted)


# Each agreement's grants by (purpose, role), keyed by the agreement object's id and holding
# the object itself, so an id is never reused while its entry lives (an agreement is frozen, and
# a reloaded or copied one is a new object, a new entry). Cleared when it holds this many.
_GRANTS: dict[
    int, tuple[Agreement, dict[tuple[Purpose, AgencyRole], tuple[GroupShare, ...] | None]]
] = {}
_MAX_GRANTS_HELD: Final = 256


# --- loading -----------------------------------------------------------------------------------


def load_agreement(path: Path) -> Agreement:
    """Read and validate one agreement file; SchemaError names the file and each bad field."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SchemaError(f"no agreement file at {path}") from None
    except yaml.YAMLError as exc:
        raise SchemaError(f"{path} is not valid YAML: {exc}") from None
    try:
        agreement = Agreement.model_validate(raw)
    except ValidationError as exc:
        raise SchemaError(
            f"{path} is not a valid sharing agreement; fix the named fields",
            field_problems(exc),
        ) from None
    if agreement.id != path.stem:
        raise SchemaError(
            f"{path} holds agreement '{agreement.id}'",
            (FieldProblem("id", f"name the file {agreement.id}.yaml, or the id {path.stem}"),),
        )
    return agreement


def agreement_files(directory: Path) -> list[Path]:
    if not directory.is_dir():
        raise SchemaError(
            f"no agreements folder at {directory}; each disclosure is made under an agreement, "
            "so the broker shares nothing without one"
        )
    return sorted(directory.glob("*.yaml"))


def load_agreements(directory: Path) -> tuple[Agreement, ...]:
    """Every agreement in ``directory`` (``*.yaml``), by id; SchemaError lists every problem.

    The problems of all files are reported together, each field prefixed with its file name.
    """
    agreements: list[Agreement] = []
    problems: list[FieldProblem] = []
    for path in agreement_files(directory):
        try:
            agreements.append(load_agreement(path))
        except SchemaError as exc:
            problems.extend(_file_problems(path, exc))
    if problems:
        raise SchemaError(
            f"the sharing agreements in {directory} are not valid: {len(problems)} problem(s); "
            "run 'cairn policy check'",
            tuple(problems),
        )
    return tuple(sorted(agreements, key=lambda a: a.id))


def _file_problems(path: Path, exc: SchemaError) -> list[FieldProblem]:
    if not exc.problems:
        return [FieldProblem(path.name, str(exc))]
    return [FieldProblem(f"{path.name}: {p.field}", p.problem) for p in exc.problems]
