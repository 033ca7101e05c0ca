"""The sharing agreements' linter: what ``cairn policy check`` reports before anything is shared.

``check`` lints a set of loaded agreements against each other and the federation: unknown or
mis-roled parties, purposes with no lawful basis, grants beyond the statutory content of an
Operation Encompass notification, contradictory agreements in force together, and a
special-category or criminal-offence field granted for a purpose none of whose bases carries its
condition. ``lint_directory`` loads a folder first, so a file that does not load is a problem too.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Final

from broker.policy.agreements import (
    ENCOMPASS_CONTENT,
    Agreement,
    PurposeTerms,
    agreement_files,
    load_agreement,
)
from schemas.classes import DataClass
from schemas.consent import ConsentState, StatutoryGateway
from schemas.disclosure import LawfulBasis, ShareScope
from schemas.encompass import CHILD_AGE_UNDER
from schemas.errors import FieldProblem, SchemaError
from schemas.federation import AgencyRole, Federation
from schemas.referral import FieldGroup, Purpose

__all__ = ["Problem", "check", "lint_directory"]

_ENCOMPASS_SCOPES: Final = {
    AgencyRole.SCHOOL: ShareScope.OWN_PUPIL,
    AgencyRole.CHILDRENS_SOCIAL_CARE: ShareScope.HOME_EDUCATED,
}
#: The gateway a notice to each Encompass role rests on: s49A names schools; a child on no
#: school roll is notified to children's social care under the Children Act 2004 s11 duty.
_ENCOMPASS_GATEWAYS: Final = {
    AgencyRole.SCHOOL: StatutoryGateway.DAA_2021_S49A,
    AgencyRole.CHILDRENS_SOCIAL_CARE: StatutoryGateway.CA_2004_S11,
}


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the agreements: where (agreement or file, field), a code, why."""

    agreement: str
    field: str
    code: str
    message: str

    def __str__(self) -> str:
        return f"{self.agreement}: {self.field}: {self.message} [{self.code}]"


def lint_directory(directory: Path, federation: Federation) -> list[Problem]:
    """Load every agreement file in ``directory`` and lint them: load errors become problems."""
    loaded: list[Agreement] = []
    problems: list[Problem] = []
    try:
        files = agreement_files(directory)
    except SchemaError as exc:
        return [Problem(str(directory), "(folder)", "agreements.missing", str(exc))]
    if not files:
        problems.append(
            Problem(str(directory), "(folder)", "agreements.none", "no agreement files")
        )
    for path in files:
        try:
            loaded.append(load_agreement(path))
        except SchemaError as exc:
            problems.extend(
                Problem(path.name, p.field, "agreement.invalid", p.problem)
                for p in (exc.problems or (FieldProblem("(file)", str(exc)),))
            )
    return problems + check(loaded, federation)


def check(agreements: Sequence[Agreement], federation: Federation) -> list[Problem]:
    """Lint agreements against each other and the federation; [] when there is nothing to fix."""
    problems: list[Problem] = []
    seen: set[str] = set()
    for a in agreements:
        if a.id in seen:
            problems.append(
                Problem(a.id, "id", "agreement.duplicate_id", "another agreement has this id")
            )
        seen.add(a.id)
        problems.extend(_check_parties(a, federation))
        for i, terms in enumerate(a.purposes):
            problems.extend(_check_terms(a, i, terms))
    problems.extend(_contradictions(agreements))
    return problems


def _check_parties(a: Agreement, federation: Federation) -> Iterable[Problem]:
    for i, party in enumerate(a.parties):
        member = federation.get(party.agency)
        if member is None:
            yield Problem(
                a.id,
                f"parties.{i}.agency",
                "party.unknown_agency",
                f"'{party.agency}' is not an agency of {federation.name}",
            )
        elif member.role is not party.role:
            yield Problem(
                a.id,
                f"parties.{i}.role",
                "party.role_mismatch",
                f"'{party.agency}' is {member.role.value} in the federation, "
                f"not {party.role.value}",
            )


def _check_terms(a: Agreement, i: int, terms: PurposeTerms) -> Iterable[Problem]:
    at = f"purposes.{i}"
    purpose = terms.purpose
    encompass = purpose is Purpose.ENCOMPASS
    roles = {p.role for p in a.parties}
    if not terms.recipients:
        yield Problem(
            a.id,
            f"{at}.recipients",
            "purpose.no_recipients",
            f"{purpose.value} grants nothing to any role",
        )
    for role in terms.recipients:
        if role not in roles:
            yield Problem(
                a.id,
                f"{at}.recipients.{role.value}",
                "grant.role_not_party",
                f"no party of the agreement has the role {role.value}",
            )
    if not terms.lawful_bases and not (encompass and terms.notification_basis):
        yield Problem(
            a.id,
            f"{at}.lawful_bases",
            "purpose.no_lawful_basis",
            f"{purpose.value} names no lawful basis, so nothing can be shared for it",
        )
    if encompass:
        yield from _check_encompass_terms(a, at, terms)
    if not encompass and terms.notification_basis:
        yield Problem(
            a.id,
            f"{at}.notification_basis",
            "purpose.notification_basis_misplaced",
            "only the ENCOMPASS purpose carries notifications",
        )
    yield from _check_consent(a, at, terms)
    if purpose is Purpose.MARAC and not terms.marac_criterion_required:
        yield Problem(
            a.id,
            f"{at}.marac_criterion_required",
            "marac.criterion_not_required",
            "a MARAC referral must meet a MARAC criterion: set marac_criterion_required",
        )
    for role, grant in terms.recipients.items():
        where = f"{at}.recipients.{role.value}"
        if encompass:
            basis = terms.notification_basis.get(role)
            bases: tuple[LawfulBasis, ...] = () if basis is None else (basis,)
        else:
            bases = terms.lawful_bases
        yield from _check_classified(a, where, grant, bases)
        if encompass:
            yield from _check_encompass(a, where, role, grant)


def _check_encompass_terms(a: Agreement, at: str, terms: PurposeTerms) -> Iterable[Problem]:
    """The per-role basis and the age band of Operation Encompass terms, against the statute."""
    for role in terms.recipients:
        basis = terms.notification_basis.get(role)
        gateway = _ENCOMPASS_GATEWAYS.get(role)
        where = f"{at}.notification_basis.{role.value}"
        if basis is None:
            yield Problem(
                a.id,
                where,
                "encompass.no_notification_basis",
                f"name the basis Operation Encompass notices to a {role.value} rely on",
            )
        elif gateway is not None and basis.gateway is not gateway:
            yield Problem(
                a.id,
                where,
                "encompass.notification_basis_wrong",
                "a notice to a school is made under DAA 2021 s49A: name gateway daa2021_s49a"
                if role is AgencyRole.SCHOOL
                else "s49A names schools: a child on no school roll is notified to children's "
                "social care on the safeguarding basis (art6_1_e, art9_2_g, "
                "dpa2018_sch1_para18, gateway ca2004_s11)",
            )
    if terms.lawful_bases:
        yield Problem(
            a.id,
            f"{at}.lawful_bases",
            "encompass.lawful_bases_ignored",
            "Operation Encompass relies on the basis named per recipient role in "
            "notification_basis; these lawful_bases are never used",
        )
    if terms.child_age_under < CHILD_AGE_UNDER:
        yield Problem(
            a.id,
            f"{at}.child_age_under",
            "encompass.child_age_below_statute",
            f"s49A concerns every child under {CHILD_AGE_UNDER} (DAA 2021 s3): pupils aged "
            f"{terms.child_age_under} to {CHILD_AGE_UNDER - 1} would not be notified",
        )


def _check_classified(
    a: Agreement, where: str, grant: Mapping[FieldGroup, str], bases: Sequence[LawfulBasis]
) -> Iterable[Problem]:
    """A classified field granted (whole group or subset, any group) whose class none of the
    bases carries a condition for: the engine would always withhold it (UK GDPR Art 9, Art 10;
    DPA 2018 s10), so the grant promises what the agreement cannot lawfully give."""
    for group, access in grant.items():
        share = a.share(group, access)
        by_class: dict[DataClass, list[str]] = {}
        for entry, data_class in share.classified():
            by_class.setdefault(data_class, []).append(entry)
        for data_class, entries in by_class.items():
            if any(b.carries(data_class) for b in bases):
                continue
            yield Problem(
                a.id,
                f"{where}.{group.value}",
                f"{data_class.value}.no_condition",
                f"{share.label} grants {data_class.value.replace('_', ' ')} data "
                f"({', '.join(entries)}) but no lawful basis of the purpose carries "
                f"{data_class.condition}, so it would always be withheld",
            )


def _check_consent(a: Agreement, at: str, terms: PurposeTerms) -> Iterable[Problem]:
    others = {s for s in terms.consent.states if s is not ConsentState.OBTAINED}
    if terms.consent.override_reasons and not others:
        yield Problem(
            a.id,
            f"{at}.consent.override_reasons",
            "consent.overrides_unreachable",
            "override reasons are listed but only 'obtained' is accepted, so none can apply",
        )
    # A notification's "not required, statutory" needs no override: the statute is its basis.
    if terms.purpose is Purpose.ENCOMPASS:
        others.discard(ConsentState.NOT_REQUIRED_STATUTORY)
    if others and not terms.consent.override_reasons:
        yield Problem(
            a.id,
            f"{at}.consent.states",
            "consent.states_need_override",
            f"{', '.join(sorted(s.value for s in others))} accepted, but those states need an "
            "override and no override reason is accepted",
        )


def _check_encompass(
    a: Agreement, where: str, role: AgencyRole, grant: Mapping[FieldGroup, str]
) -> Iterable[Problem]:
    scope = _ENCOMPASS_SCOPES.get(role)
    if scope is None:
        yield Problem(
            a.id,
            where,
            "encompass.recipient_role",
            "Operation Encompass goes to schools, or children's social care for a "
            "home-educated child",
        )
        return
    for group, access in grant.items():
        allowed = ENCOMPASS_CONTENT.get(group, frozenset())
        share = a.share(group, access)
        if group not in ENCOMPASS_CONTENT or (
            allowed is not None and (share.subset is None or not set(share.fields) <= allowed)
        ):
            yield Problem(
                a.id,
                f"{where}.{group.value}",
                "encompass.beyond_statutory",
                f"{share.label} is more than the statutory content of a notification",
            )
        if group is FieldGroup.G4 and share.scope is not scope:
            yield Problem(
                a.id,
                f"{where}.G4",
                "encompass.scope",
                f"a {role.value} gets only the children it is responsible for: use a subset "
                f"with scope {scope.value}",
            )


def _contradictions(agreements: Sequence[Agreement]) -> Iterable[Problem]:
    """Two agreements in force together that grant one role different things for one purpose.

    The engine then uses the first by id, which is a choice an IG officer should make instead.
    """
    for x, a in enumerate(agreements):
        for b in agreements[x + 1 :]:
            if not _overlap(a, b):
                continue
            shared = {p.agency for p in a.parties} & {p.agency for p in b.parties}
            if len(shared) < 2:
                continue
            for terms in a.purposes:
                other = b.terms(terms.purpose)
                if other is None:
                    continue
                for role in terms.recipients.keys() & other.recipients.keys():
                    if a.grant(terms.purpose, role) != b.grant(terms.purpose, role):
                        yield Problem(
                            a.id,
                            f"purposes.{a.purposes.index(terms)}.recipients.{role.value}",
                            "grant.contradictory",
                            f"{b.id} grants {role.value} other groups for "
                            f"{terms.purpose.value} while both are in force",
                        )


def _overlap(a: Agreement, b: Agreement) -> bool:
    a_end = a.in_force_until or date.max
    b_end = b.in_force_until or date.max
    return a.in_force_from <= b_end and b.in_force_from <= a_end
