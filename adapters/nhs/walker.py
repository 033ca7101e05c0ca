"""Walking one validated FHIR Bundle: its resources, Cairn's extensions, and where fields came from.

``BundleWalker`` is what every part of the inbound mapping (``request``, ``people``, ``risk``,
``consent``) reads the bundle through. It finds resources by type and references by
``fullUrl``, reads Cairn's extensions (one of each, only the parts each one defines), and keeps
``origins``: for each referral field, the FHIRPath of the element it came from, so that a
problem found later by the referral's own model is reported where the sending trust can find
it. Anything that does not fit is refused with ``refuse``, naming that FHIRPath.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any, Final, NoReturn

from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.extension import Extension
from fhir.resources.R4B.identifier import Identifier

from adapters.importing import DATE_WINDOW, in_window
from adapters.nhs.codes import AGENCY_SYSTEM, CAIRN
from schemas.errors import FieldProblem

__all__ = ["ROOT", "BundleWalker", "Refused", "ext_value", "refuse"]

#: The FHIRPath every problem's path starts from.
ROOT: Final = "Bundle"


class Refused(Exception):
    """The bundle cannot be mapped: ``problem`` names the element and what is wrong with it."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(path, problem)
        self.problem = FieldProblem(path, problem)


def refuse(path: str, problem: str) -> NoReturn:
    raise Refused(path, problem)


def ext_value(ext: Extension) -> Any:
    """The value of a simple (one-value) extension, whatever its type; None if it has none."""
    for name in (
        "valueBoolean",
        "valueCode",
        "valueString",
        "valueInteger",
        "valueDate",
        "valueDateTime",
        "valueUri",
        "valueIdentifier",
        "valueAttachment",
    ):
        value = getattr(ext, name, None)
        if value is not None:
            return value
    return None


class BundleWalker:
    """Walks one validated Bundle, recording where each referral field came from."""

    def __init__(self, bundle: Bundle, origins: dict[str, str]) -> None:
        self.bundle = bundle
        self.origins = origins
        self.entries = list(bundle.entry or [])
        self.urls = {e.fullUrl: i for i, e in enumerate(self.entries) if e.fullUrl}

    def resources(self, kind: type[Any]) -> list[tuple[int, Any]]:
        return [(i, e.resource) for i, e in enumerate(self.entries) if isinstance(e.resource, kind)]

    def optional(self, kind: type[Any]) -> tuple[int, Any] | None:
        found = self.resources(kind)
        if len(found) > 1:
            name = kind.__name__.removeprefix("Fhir")
            refuse(f"{ROOT}.entry[{found[1][0]}]", f"a referral bundle has one {name}")
        return found[0] if found else None

    def required(self, kind: type[Any]) -> tuple[int, Any]:
        found = self.optional(kind)
        if found is None:
            name = kind.__name__.removeprefix("Fhir")
            refuse(f"{ROOT}.entry", f"a referral bundle needs a {name} resource")
        return found

    def path(self, index: int, rest: str = "") -> str:
        return f"{ROOT}.entry[{index}].resource{'.' + rest if rest else ''}"

    def points_at(self, reference: Any, target: int, path: str) -> None:
        ref = getattr(reference, "reference", None)
        if ref is None or self.urls.get(ref) != target:
            refuse(path, "must reference the bundle's Patient entry by its fullUrl")

    def extensions(self, holder: Any, url: str) -> list[tuple[int, Extension]]:
        return [(j, e) for j, e in enumerate(holder.extension or []) if e.url == url]

    def extension(self, holder: Any, url: str, path: str) -> tuple[int, Extension] | None:
        found = self.extensions(holder, url)
        if len(found) > 1:
            refuse(f"{path}.extension[{found[1][0]}]", f"only one {url} extension is allowed")
        return found[0] if found else None

    def check_extensions(self, holder: Any, allowed: set[str], path: str) -> None:
        for j, e in enumerate(holder.extension or []):
            if e.url.startswith(CAIRN) and e.url not in allowed:
                refuse(f"{path}.extension[{j}]", "this extension does not belong here")

    def parts(self, ext: Extension, path: str, names: set[str]) -> dict[str, Any]:
        parts: dict[str, Any] = {}
        for k, sub in enumerate(ext.extension or []):
            if sub.url not in names:
                refuse(
                    f"{path}.extension[{k}].url", f"unknown part; expected one of {sorted(names)}"
                )
            parts[sub.url] = ext_value(sub)
        return parts

    def agency(self, identifier: Identifier | None, path: str) -> str:
        if identifier is None or identifier.system != AGENCY_SYSTEM or not identifier.value:
            refuse(path, f"must be a Cairn agency identifier (system {AGENCY_SYSTEM})")
        return str(identifier.value)

    def code(self, concepts: Any, system: str, path: str, what: str) -> str:
        for k, concept in enumerate(concepts or []):
            for m, coding in enumerate(concept.coding or []):
                if coding.system == system and coding.code:
                    self.origins.setdefault(path, f"{path}[{k}].coding[{m}].code")
                    return str(coding.code)
        refuse(path, f"needs a coding of {what} from {system}")

    def instant(self, value: Any, path: str) -> datetime:
        if not isinstance(value, datetime) or value.tzinfo is None:
            refuse(path, "must be a full date and time with a time zone")
        if not in_window(value):  # ``primitives`` checked already; kept where the value is read
            refuse(path, f"a date outside {DATE_WINDOW}")
        return value

    def full_date(self, value: Any, path: str) -> date | None:
        """A date element the referral needs in full: FHIR allows ``1980`` and ``1980-05``."""
        if value is None:
            return None
        if not isinstance(value, date) or isinstance(value, datetime):
            refuse(path, "must be a full date, YYYY-MM-DD")
        if not in_window(value):
            refuse(path, f"a date outside {DATE_WINDOW}")
        return value
