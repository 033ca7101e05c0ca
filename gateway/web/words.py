"""A disclosure's reasons in plain words, for the web inbox's disclosure page.

What a safeguarding lead or a caseworker needs to read before the content: who sent it, for
what, under which sharing agreement and lawful basis (each legal code with its citation and
what it means, from ``schemas.legal``), on what consent, how long they may keep it, when they
must acknowledge it, and per field group what was shared, what was kept back and why. Codes
and words only: the personal data is in the content sections below it, never here.
"""

from __future__ import annotations

import html
from datetime import UTC

from schemas.disclosure import Disclosure, GroupShare
from schemas.legal import (
    GROUP_NAMES,
    LEGAL_CODES,
    OVERRIDE_WORDS,
    PURPOSE_WORDS,
    SCOPE_WORDS,
    STATE_WORDS,
)
from schemas.referral import FieldGroup

__all__ = ["group_title", "what_was_shared", "why_received"]


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _code(code: str) -> str:
    """'UK GDPR Art 6(1)(e): a task carried out in the public interest'."""
    cite, words = LEGAL_CODES.get(code, (code, ""))
    return f"{cite}: {words}" if words else cite


def group_title(group: FieldGroup) -> str:
    """'G1 victim identity'."""
    return f"{group.value} {GROUP_NAMES[group]}"


def _consent(disclosure: Disclosure) -> str:
    basis = disclosure.consent_basis
    text = f"Consent was {STATE_WORDS[basis.state]}."
    if basis.override_reason is not None:
        reason, rests_on = OVERRIDE_WORDS[basis.override_reason]
        paragraph = (
            f" ({_code(basis.override_paragraph.value)})"
            if basis.override_paragraph is not None
            else ""
        )
        text += f" It was shared without consent because {reason}{paragraph}; {rests_on}."
    return _e(text)


def why_received(disclosure: Disclosure) -> str:
    """The 'Why you received this' section (HTML)."""
    retention = disclosure.retention
    bases = "".join(f"<li>{_e(_code(c))}</li>" for c in disclosure.lawful_basis.codes)
    due = ""
    if disclosure.acknowledge_by is not None:
        when = disclosure.acknowledge_by.astimezone(UTC).strftime("%a %d %b %Y %H:%M UTC")
        due = (
            f"<dt>Acknowledge by</dt><dd>{when} (after that the broker records it as overdue)</dd>"
        )
    keep = retention.label + (f". {retention.note}" if retention.note else "")
    return (
        "<section><h2>Why you received this</h2><dl>"
        f"<dt>From</dt><dd>{_e(disclosure.sender_agency)}</dd>"
        f"<dt>For</dt><dd>{_e(PURPOSE_WORDS[disclosure.purpose])}</dd>"
        f"<dt>Sharing agreement</dt><dd>{_e(disclosure.agreement)}</dd>"
        f"<dt>Lawful basis</dt><dd><ul>{bases}</ul></dd>"
        f"<dt>Consent</dt><dd>{_consent(disclosure)}</dd>"
        f"<dt>You may keep it</dt><dd>{_e(keep)}</dd>"
        f"{due}</dl></section>"
    )


def _fields(names: tuple[str, ...]) -> str:
    return ", ".join(n.replace("_", " ") for n in names)


def _share(share: GroupShare) -> str:
    if share.subset is None:
        what = "all of it"
    else:
        kept = _fields(share.fields)
        what = f"only part of it ({share.subset.replace('_', ' ')}{': ' + kept if kept else ''})"
        if share.dash_topics:
            what += f"; of the DASH answers only those on {_fields(share.dash_topics)}"
        if share.scope is not None:
            what += f"; {SCOPE_WORDS[share.scope]}"
    withheld = (
        f"<br>Kept back: {_e(_fields(share.withheld))}, because the lawful basis above has no "
        "condition that lets the sender disclose them to you."
        if share.withheld
        else ""
    )
    return f"<li><strong>{_e(group_title(share.group))}</strong>: {_e(what)}.{withheld}</li>"


def what_was_shared(disclosure: Disclosure) -> str:
    """The 'What was shared' section (HTML): each field group shared, and the groups not."""
    shared = {s.group for s in disclosure.groups}
    missing = [g for g in FieldGroup if g not in shared]
    if disclosure.notification is not None:
        missing = []  # a notice is its own short message, not a referral's groups
    not_shared = (
        "<p>Not shared with you: "
        + _e(", ".join(group_title(g) for g in missing))
        + ". The sharing agreement does not give them to you for this purpose "
        "(need to know).</p>"
        if missing
        else ""
    )
    items = "".join(_share(s) for s in disclosure.groups)
    return f"<section><h2>What was shared</h2><ul>{items}</ul>{not_shared}</section>"
