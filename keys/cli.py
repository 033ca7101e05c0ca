"""The key commands: ``cairn agency`` (an agency's own machine), ``cairn federation`` (the
federation administrator's) and ``cairn keys`` (the development federation on one machine).

Every store and passphrase is where ``keys.custody`` says: ``<key_dir>/<store>`` with its
passphrase in ``<passphrase_dir>/<store>`` or ``CAIRN_KEY_PASSPHRASE[_FILE]``, the directories
from ``broker.config.Settings``. There is deliberately no option for a passphrase. Errors are
printed as one line saying what to do, never as a traceback; a refused request changes nothing.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from broker.cli.common import clean_errors as _clean_errors
from broker.cli.common import settings_or_exit as _settings
from broker.config import Settings
from broker.trust import custody_of
from keys import custody as names
from keys.custody import Custody, agency_store, store_of
from keys.enrolment import (
    MAX_REQUEST_BYTES,
    apply_revocation,
    apply_rotation,
    create_agency,
    enrol,
    install_certificate,
    load_ca,
    read_enrolment,
    request_name,
    request_with_certificate,
    revocation_request,
    rotation_name,
    rotation_request,
)
from keys.errors import (
    EnrolmentRefused,
    FederationExists,
    KeyStoreError,
    Reason,
    VerificationError,
)
from keys.federation import (
    Admin,
    read_root_key,
    refresh_registry,
    revoke_key,
    rotate,
)
from keys.jwks import jwk_set
from keys.registry import (
    AUDITOR_ID,
    BROKER_ID,
    KeyStatus,
    KeyUse,
    RegisteredKey,
    Registry,
    log_vkey,
    verify_registry,
    verify_registry_signature,
)
from keys.store import CA_CERT, REGISTRY, FileStore
from schemas.errors import CairnError
from schemas.federation import AgencyRole, Federation

__all__ = ["agency", "federation", "keys"]

_CONTEXT = {"help_option_names": ["-h", "--help"]}


def _now() -> datetime:
    return datetime.now(UTC)


def _when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC") if moment else "-"


def _custody(settings: Settings | None = None) -> Custody:
    return custody_of(settings or _settings())


def _load_federation(settings: Settings) -> Federation:
    from broker.federation import load_federation

    return load_federation(settings.federation_dir)


def _admin(custody: Custody) -> Admin:
    """The administrator's root store and the public store the registry is published to."""
    return Admin(custody.store(names.ROOT), custody.passphrase(names.ROOT), custody.public())


def _registry(custody: Custody, settings: Settings, now: datetime) -> Registry:
    store = custody.public()
    return verify_registry(
        store.read(REGISTRY), read_root_key(store, root_kid=settings.registry_root_kid), now=now
    )


def _read_file(path: Path, what: str) -> bytes:
    """The file's bytes; one larger than any request or certificate Cairn makes is refused
    unread (it came from another party)."""
    try:
        with path.open("rb") as fh:
            data = fh.read(MAX_REQUEST_BYTES + 1)
    except OSError as exc:
        raise KeyStoreError(f"cannot read the {what} {path}: {exc.strerror}") from None
    if len(data) > MAX_REQUEST_BYTES:
        raise KeyStoreError(f"the {what} {path} is larger than {MAX_REQUEST_BYTES} bytes")
    return data


def _write_file(path: Path, data: bytes) -> None:
    FileStore(path.parent.resolve()).write(path.name, data, private=False)


def _show(registry: Registry, now: datetime) -> None:
    click.echo(
        f"{registry.federation}: registry serial {registry.serial}, issued "
        f"{_when(registry.issued_at)}, expires {_when(registry.expires_at)}"
    )
    for member in registry.members:
        click.echo(f"{member.id} ({member.role.value})")
        for key in member.keys:
            state = key.status.value
            if key.status is KeyStatus.RETIRED and key.retired_at is not None:
                until = key.retired_at + registry.retired_grace
                state += f" {_when(key.retired_at)}, honoured until {_when(until)}"
                if now > until:
                    state += " (grace over)"
            elif key.status is KeyStatus.REVOKED:
                state += f" {_when(key.revoked_at)}"
            click.echo(
                f"  {key.use.value:3}  {key.kid}  valid {_when(key.not_before)} to "
                f"{_when(key.not_after)}  {state}"
            )
            if key.status is KeyStatus.REVOKED:
                continue
            if member.id == AUDITOR_ID and key.use is KeyUse.SIGNING:
                click.echo(f"       checkpoint verifier key: {_checkpoint_vkey(key)}")
            elif key.vkey is not None:
                click.echo(f"       cosignature verifier key: {key.vkey}")


def _checkpoint_vkey(key: RegisteredKey) -> str:
    """The auditor's signing key as the C2SP signed-note verifier key the registry lists
    (``name+hash+base64``, named by the log origin); derived for a registry from before keys
    carried one."""
    public = key.jwk.public_key()
    if key.vkey is not None or not isinstance(public, Ed25519PublicKey):
        return key.vkey or ""
    return log_vkey(public)


def _new_keys(registry: Registry, member: str) -> None:
    found = registry.member(member)
    for key in (k for k in found.keys if k.status is KeyStatus.ACTIVE) if found else ():
        click.echo(f"{member}: new {key.use.value} key {key.kid}")
    click.echo(f"registry serial {registry.serial} signed")


# --- cairn agency: on the agency's own machine -------------------------------------------------


@click.group(name="agency", context_settings=_CONTEXT)
def agency() -> None:
    """An agency's own keys, on its own machine: make them, enrol, install, rotate, revoke.

    The store is <key_dir>/agencies/<id> (CAIRN_KEY_DIR); its passphrase is the file
    <passphrase_dir>/agencies/<id> (CAIRN_PASSPHRASE_DIR) or CAIRN_KEY_PASSPHRASE[_FILE]. The
    private keys never leave it: what goes to the federation administrator is a signed request.
    """


@agency.command("init")
@click.option("--agency", "agency_id", required=True, help="The agency's id in agencies.yaml.")
@click.option(
    "--role",
    type=click.Choice([r.value for r in AgencyRole]),
    help="The role the agency claims [default: its role in agencies.yaml, if it is there].",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the enrolment request here (to send to the administrator).",
)
@_clean_errors
def agency_init(agency_id: str, role: str | None, out: Path | None) -> None:
    """Make the agency's signing, encryption and TLS keys and its enrolment request.

    The request (the public keys, a CSR for the TLS key, the agency id and role, signed with
    the new signing key) is written to <store>/enrolment/<id>.request.jws; send it to the
    federation administrator, who runs 'cairn federation enrol' on it.
    """
    settings = _settings()
    custody = _custody(settings)
    claimed = AgencyRole(role) if role else _listed_role(settings, agency_id)
    name = agency_store(agency_id)
    store = custody.store(name)
    token = create_agency(store, agency_id, claimed, custody.passphrase(name), now=_now())
    if out is not None:
        _write_file(out, token)
    where = out or store.path(request_name(agency_id))
    click.echo(f"{agency_id}: keys made in {store.root} (role {claimed.value})")
    click.echo(f"enrolment request: {where}; send it to the federation administrator")


@agency.command("request")
@click.option("--agency", "agency_id", required=True, help="The agency's id.")
@click.option(
    "--certificate",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="The certificate your own CA issued for the CSR (<store>/enrolment/<id>.csr), PEM; "
    "the CA that issued it is the one agencies.yaml must trust for the agency (trusted_ca).",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the enrolment request here.",
)
@_clean_errors
def agency_request(agency_id: str, certificate: Path, out: Path | None) -> None:
    """Re-make the enrolment request to carry a certificate of the agency's own CA.

    For an agency whose TLS identity comes from its own CA: have that CA sign the CSR 'cairn
    agency init' wrote, then run this; the federation accepts it only if agencies.yaml lists
    that CA as trusted for the agency (trusted_ca).
    """
    custody = _custody()
    name = agency_store(agency_id)
    store = custody.store(name)
    token = request_with_certificate(
        store,
        agency_id,
        custody.passphrase(name),
        _read_file(certificate, "certificate"),
        now=_now(),
    )
    if out is not None:
        _write_file(out, token)
    where = out or store.path(request_name(agency_id))
    click.echo(f"enrolment request with your CA's certificate: {where}")


def _listed_role(settings: Settings, agency_id: str) -> AgencyRole:
    try:
        listed = _load_federation(settings).get(agency_id)
    except CairnError:
        listed = None
    if listed is None:
        raise click.UsageError(f"give --role: {agency_id} is not in this machine's agencies.yaml")
    return listed.role


@agency.command("install")
@click.argument("certificate", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--agency", "agency_id", required=True, help="The agency's id.")
@click.option(
    "--ca",
    "own_ca",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The agency's own CA certificate (PEM), if its own CA issued CERTIFICATE.",
)
@_clean_errors
def agency_install(certificate: Path, agency_id: str, own_ca: Path | None) -> None:
    """Install the TLS certificate the administrator sent back for the agency's request.

    It must be for the TLS key 'cairn agency init' made, name the agency, and be issued by the
    federation CA (<key_dir>/public/tls/ca.crt) or, with --ca, by the agency's own CA.
    """
    custody = _custody()
    store = custody.store(agency_store(agency_id))
    issuers = [x509.load_pem_x509_certificate(custody.public().read(CA_CERT))]
    if own_ca is not None:
        try:
            issuers += x509.load_pem_x509_certificates(_read_file(own_ca, "CA certificate"))
        except ValueError:
            raise KeyStoreError(f"{own_ca} is not a PEM certificate") from None
    installed = install_certificate(
        store,
        agency_id,
        _read_file(certificate, "certificate"),
        issuers=tuple(issuers),
        now=_now(),
    )
    click.echo(
        f"{agency_id}: certificate installed, valid until {_when(installed.not_valid_after_utc)}"
    )


@agency.command("rotate")
@click.option("--agency", "agency_id", required=True, help="The agency's id.")
@click.option("--tls", is_flag=True, help="Also a new TLS key, with a CSR for it in the request.")
@click.option(
    "--out", type=click.Path(dir_okay=False, path_type=Path), help="Also write the request here."
)
@_clean_errors
def agency_rotate(agency_id: str, tls: bool, out: Path | None) -> None:
    """Make new signing and encryption keys and the request to register them.

    The request is signed by the new signing key and by the agency's current registered one;
    the administrator applies it with 'cairn federation rotate'. Until then the current keys
    stay in force; after, the old ones are retired (they still open and verify for the grace
    period). With --tls the certificate sent back is installed with 'cairn agency install',
    which puts the new TLS key in place of the old.
    """
    settings = _settings()
    custody = _custody(settings)
    now = _now()
    name = agency_store(agency_id)
    token = rotation_request(
        custody.member_store(agency_id),
        agency_id,
        custody.passphrase(name),
        _registry(custody, settings, now),
        now=now,
        tls=tls,
    )
    if out is not None:
        _write_file(out, token)
    where = out or custody.store(name).path(rotation_name(agency_id))
    click.echo(f"rotation request: {where}; send it to the federation administrator")


@agency.command("revoke")
@click.option("--agency", "agency_id", required=True, help="The agency's id.")
@click.option("--kid", required=True, help="The key to revoke (see 'cairn keys list').")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Where to write the request.",
)
@_clean_errors
def agency_revoke(agency_id: str, kid: str, out: Path) -> None:
    """Ask for one of the agency's keys to be revoked (a lost or exposed key).

    Signed by the agency's active signing key; the administrator applies it with
    'cairn federation revoke --request'. If that signing key itself is lost, ask the
    administrator to revoke it ('cairn federation revoke --agency --kid').
    """
    settings = _settings()
    custody = _custody(settings)
    now = _now()
    token = revocation_request(
        custody.member_store(agency_id),
        agency_id,
        kid,
        custody.passphrase(agency_store(agency_id)),
        _registry(custody, settings, now),
        now=now,
    )
    _write_file(out, token)
    click.echo(f"revocation request: {out}; send it to the federation administrator")


# --- cairn federation: the administrator's machine ---------------------------------------------


@click.group(name="federation", context_settings=_CONTEXT)
def federation() -> None:
    """The federation administrator: admit agencies, apply their rotations and revocations.

    Needs the root store (<key_dir>/root) and, to enrol, the CA store (<key_dir>/ca), each with
    its passphrase (<passphrase_dir>/root, <passphrase_dir>/ca, or CAIRN_KEY_PASSPHRASE[_FILE]).
    Publishes each new signed registry to <key_dir>/public (CAIRN_PUBLIC_KEY_DIR). Never sees an
    agency's private key. A refused request changes nothing.
    """


@federation.command("init")
@_clean_errors
def federation_init() -> None:
    """Create the federation itself, with no agency yet: root key, CA, pseudonym secret, the
    broker's and the auditor's keys, each in its own store, and registry serial 1.

    Each store's passphrase is <passphrase_dir>/<store> if that file exists, else a random
    one written there (0600): move each to its holder's secret storage. Agencies then join
    with 'cairn federation enrol'. Refuses to touch stores that already hold anything.
    """
    from keys.development import HUB_STORES
    from keys.federation import init_hub

    settings = _settings()
    custody = _custody(settings)
    for name in (*HUB_STORES, names.PUBLIC):
        if not custody.store(name).is_empty() or custody.all_in_one:
            raise FederationExists(
                f"{custody.folder(name)} already holds keys; it is never overwritten"
            )
    stores = {name: (custody.store(name), custody.new_passphrase(name)) for name in HUB_STORES}
    registry = init_hub(stores, custody.public(), _load_federation(settings).name, now=_now())
    click.echo(
        f"created the federation '{registry.federation}' in {custody.key_dir}: "
        f"{', '.join(HUB_STORES)} and public; registry serial {registry.serial}; "
        f"passphrases in {custody.passphrase_dir}"
    )


def _trusted_cas(
    settings: Settings, fed: Federation, agency_id: str
) -> tuple[x509.Certificate, ...]:
    listed = fed.get(agency_id)
    if listed is None or listed.trusted_ca is None:
        return ()
    path = settings.federation_dir / listed.trusted_ca
    try:
        return tuple(x509.load_pem_x509_certificates(_read_file(path, "trusted CA")))
    except ValueError:
        raise KeyStoreError(
            f"{path} (trusted_ca of {agency_id}) is not a PEM certificate"
        ) from None


@federation.command("enrol")
@click.argument("request", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write the agency's certificate [default: <agency>.crt beside REQUEST].",
)
@_clean_errors
def federation_enrol(request: Path, out: Path | None) -> None:
    """Admit the agency whose enrolment REQUEST this is.

    Checks the request's proof of possession (its signature by the signing key it carries, the
    CSR's by the TLS key), that agencies.yaml lists the agency with the role it claims, and that
    it is not enrolled already; then issues its TLS certificate from the federation CA (or
    accepts one of its own CA, if agencies.yaml trusts that CA for it), adds its public keys to
    the registry and publishes the next signed serial.
    """
    settings = _settings()
    custody = _custody(settings)
    fed = _load_federation(settings)
    token = _read_file(request, "enrolment request")
    asked = read_enrolment(token)  # refuse a bad request before asking for any passphrase
    target = out or request.parent / f"{asked.agency}.crt"
    ca = load_ca(custody.store(names.CA), custody.passphrase(names.CA))
    done = enrol(
        _admin(custody),
        ca,
        fed,
        token,
        now=_now(),
        trusted_cas=_trusted_cas(settings, fed, asked.agency),
        deliver=lambda pem: _write_file(target, pem),
    )
    issuer = "the federation CA" if done.issued_by_federation else "its own CA (trusted)"
    click.echo(f"{asked.agency} enrolled; certificate by {issuer}: {target}")
    click.echo(f"registry serial {done.registry.serial} signed and published")


@federation.command("rotate")
@click.argument("request", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="For a request with a new TLS key: where to write its certificate "
    "[default: <agency>.crt beside REQUEST].",
)
@_clean_errors
def federation_rotate(request: Path, out: Path | None) -> None:
    """Apply an agency's rotation REQUEST: its new keys active, its old ones retired.

    The request must be signed by the agency's current registered signing key and by the new
    signing key it asks to register. One with a new TLS key (a CSR) is also issued its
    certificate from the CA, to send back to the agency.
    """
    custody = _custody()
    token = _read_file(request, "rotation request")
    asked = read_enrolment(_inner(token))
    target = out or request.parent / f"{asked.agency}.crt"
    ca = None
    if asked.csr is not None:
        ca = load_ca(custody.store(names.CA), custody.passphrase(names.CA))
    registry = apply_rotation(
        _admin(custody), token, now=_now(), ca=ca, deliver=lambda pem: _write_file(target, pem)
    )
    _new_keys(registry, asked.agency)
    if ca is not None:
        click.echo(f"certificate for its new TLS key: {target}")


def _inner(token: bytes) -> bytes:
    """The request a rotation request wraps, unverified (apply_rotation verifies it)."""
    from keys.jwk import b64url_decode

    parts = token.strip().split(b".")
    try:
        if len(parts) != 3:
            raise ValueError("not three parts")
        return b64url_decode(parts[1])
    except ValueError:
        raise EnrolmentRefused("this is not a signed rotation request") from None


@federation.command("revoke")
@click.option(
    "--request",
    "request",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="An agency's revocation request.",
)
@click.option("--agency", "member", help="Revoke on the administrator's own authority: the id.")
@click.option("--kid", help="With --agency: the key id to revoke.")
@_clean_errors
def federation_revoke(request: Path | None, member: str | None, kid: str | None) -> None:
    """Revoke a key: at an agency's signed --request, or on your own with --agency and --kid.

    Every component refuses the key from its next registry load. A member left with no active
    key must rotate (an agency: 'cairn agency rotate') before it can send or receive.
    """
    custody = _custody()
    if request is not None and member is None and kid is None:
        registry = apply_revocation(
            _admin(custody), _read_file(request, "revocation request"), now=_now()
        )
        click.echo(f"revoked as requested; registry serial {registry.serial} signed")
        return
    if request is not None or member is None or kid is None:
        raise click.UsageError("give either --request FILE, or --agency and --kid")
    registry = revoke_key(_admin(custody), member, kid, now=_now())
    click.echo(f"{member}: key {kid} revoked; registry serial {registry.serial} signed")


# --- cairn keys: the development federation on one machine ---------------------------------------


@click.group(name="keys", context_settings=_CONTEXT)
def keys() -> None:
    """The development federation's keys on one machine, and the signed registry.

    Every party's keys are in a store of its own under <key_dir> (CAIRN_KEY_DIR, default
    <state_dir>/keys): root, ca, pseudonym, broker, auditor, agencies/<id>, and public (the
    registry). Each store has its own passphrase, in <passphrase_dir>/<store>
    (CAIRN_PASSPHRASE_DIR, default <state_dir>/passphrases) or CAIRN_KEY_PASSPHRASE[_FILE].
    """


@keys.command()
@_clean_errors
def init() -> None:
    """Create the development federation through the real enrolment procedure.

    The administrator's root key, CA and pseudonym secret and the broker's and the auditor's
    keys are made in their own stores; then each agency of agencies.yaml makes its own keys
    ('cairn agency init'), is admitted from its request alone ('cairn federation enrol') and
    installs its certificate. Each store gets a random passphrase in <passphrase_dir>/<store>
    unless one is there already. Refuses to touch stores that already hold anything.
    """
    from keys.development import init_development

    settings = _settings()
    custody = _custody(settings)
    registry, admitted = init_development(custody, _load_federation(settings), now=_now())
    click.echo(
        f"created the federation '{registry.federation}' in {custody.key_dir}: root, CA, "
        f"pseudonym, broker and auditor stores; {len(admitted)} agencies enrolled, each from "
        f"its own store; {len(registry.members)} members, registry serial {registry.serial}, "
        f"expires {_when(registry.expires_at)}; passphrases in {custody.passphrase_dir}"
    )


@keys.command("list")
@_clean_errors
def list_keys() -> None:
    """Show the registry: every member, its keys, their validity and status.

    Under the auditor's signing keys, the checkpoint verifier key (C2SP signed-note
    ``name+hash+base64``, the log origin as the name), as served at /v1/audit/verifier-key;
    under each witness's, its cosignature/v1 verifier key (C2SP tlog-cosignature), the form
    CAIRN_AUDITOR_WITNESSES and any signed-note verifier take.

    Needs no passphrase: the registry is public, and its signature is checked.
    """
    store = _custody().public()
    now = _now()
    root = read_root_key(store)
    token = store.read(REGISTRY)
    try:
        registry = verify_registry(token, root, now=now)
    except VerificationError as exc:
        if exc.reason is not Reason.REGISTRY_EXPIRED:
            raise
        # An operator still needs to see an expired registry to decide what to do with it.
        registry = verify_registry_signature(token, root)
        click.echo(f"warning: {exc}", err=True)
    _show(registry, now)


@keys.command("jwks")
@_clean_errors
def jwks_cmd() -> None:
    """Print the registry's keys as a JWK Set (RFC 7517 §5), as JSON on stdout.

    For any JOSE library: look up a token's kid in "keys". Revoked keys are left out; each key
    carries its member, role, status and validity window as cairn_* members (keys/jwks.py).
    The registry's signature and expiry are checked first; needs no passphrase. The auditor
    serves the same document to anyone at GET /v1/audit/jwks (docs/wire.md).
    """
    store = _custody().public()
    registry = verify_registry(store.read(REGISTRY), read_root_key(store), now=_now())
    click.echo(json.dumps(jwk_set(registry), indent=2))


@keys.command("rotate")
@click.option("--agency", "member", required=True, help="The member (agency or service) id.")
@_clean_errors
def rotate_cmd(member: str) -> None:
    """Give a member new signing (and encryption) keys; its old keys become retired.

    For an agency this is 'cairn agency rotate' and 'cairn federation rotate' in one go, which
    works only where the agency's store is on this machine (the development federation); in
    a partnership the agency runs the first and sends the request. Retired keys still verify
    and open messages for the grace period, then are refused.
    """
    settings = _settings()
    custody = _custody(settings)
    now = _now()
    if custody.all_in_one:
        store = custody.store(names.PUBLIC)
        _new_keys(rotate(store, member, custody.passphrase(names.PUBLIC), now=now), member)
        return
    admin = _admin(custody)
    if member in (BROKER_ID, AUDITOR_ID):
        own = store_of(member)
        registry = rotate(custody.store(own), member, custody.passphrase(own), now=now, admin=admin)
        _new_keys(registry, member)
        return
    current = _registry(custody, settings, now)
    if current.member(member) is None:
        raise EnrolmentRefused(
            f"{member!r} is not a member of the federation registry "
            f"({', '.join(m.id for m in current.members)})"
        )
    token = rotation_request(
        custody.member_store(member),
        member,
        custody.passphrase(agency_store(member)),
        current,
        now=now,
    )
    _new_keys(apply_rotation(admin, token, now=now), member)


@keys.command("revoke")
@click.option("--agency", "member", required=True, help="The member (agency or service) id.")
@click.option("--kid", required=True, help="The key id to revoke (see 'cairn keys list').")
@_clean_errors
def revoke_cmd(member: str, kid: str) -> None:
    """Revoke one key of a member: every component refuses it from its next registry load.

    The administrator's revocation ('cairn federation revoke --agency --kid'). A member left
    with no active key needs 'cairn keys rotate' before it can send or receive.
    """
    custody = _custody()
    if custody.all_in_one:
        admin = Admin.single(custody.public(), custody.passphrase(names.PUBLIC))
    else:
        admin = _admin(custody)
    registry = revoke_key(admin, member, kid, now=_now())
    click.echo(f"{member}: key {kid} revoked; registry serial {registry.serial} signed")


@keys.command("refresh")
@_clean_errors
def refresh_cmd() -> None:
    """Renew what expires within credential_warn_days, then re-sign the registry.

    The CA certificate and each TLS certificate due (broker, auditor, the agencies' stores on
    this machine) are re-issued for the same keys, the CA key signing (no member's private
    key is read); then the registry is re-signed with a new expiry. Needs the root and CA
    stores. Keys near their end need 'cairn keys rotate' instead, and it says so.
    """
    from keys.renewal import describe, renew, renew_federation

    settings = _settings()
    custody = _custody(settings)
    now = _now()
    within = timedelta(days=settings.credential_warn_days)
    if custody.all_in_one:
        store = custody.public()
        renewal = renew(store, custody.passphrase(names.PUBLIC), now=now, within=within)
    else:
        admin = _admin(custody)
        fed = _load_federation(settings)
        holders = [
            custody.store(name)
            for name in (
                names.BROKER,
                names.AUDITOR,
                *(agency_store(a.id) for a in fed.agencies),
            )
            if custody.folder(name).is_dir()
        ]
        renewal = renew_federation(
            custody.store(names.CA),
            custody.passphrase(names.CA),
            holders,
            lambda: refresh_registry(admin, now=now),
            now=now,
            within=within,
            publish_to=(custody.public(),),
        )
    for line in describe(renewal):
        click.echo(line)
    registry = renewal.registry
    click.echo(f"registry serial {registry.serial} signed, expires {_when(registry.expires_at)}")
