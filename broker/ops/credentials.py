"""Credential expiry for a running broker or auditor: a gauge, a warning line, TLS reloads.

``CredentialWatch`` looks at the key store's public files (``keys.expiry.read_credentials``:
the registry, the CA certificate, the TLS server certificate and every member certificate in
the store, and the active keys the registry lists; with ``for_settings`` also the Kafka
clients' CA and certificate files) at start and every ``credential_check_every_s``, reading
them again only when a file has changed. Member certificates also come from the verified TLS
handshakes (``presented``): with split custody they are in the agencies' stores, not here, and
the one an agency presents is the one that counts. From what it last saw:

- the gauge ``cairn_credential_expiry_seconds{kind,subject}`` (``broker.ops.metrics``), seconds
  until each expires, negative once it has, computed when scraped;
- the log line ``credentials.expiring`` (warning: ``kind``, ``subject``, ``days_left``,
  ``expires_at``, ``warn_days``) for each one that expires within ``credential_warn_days``, or
  ``credentials.expired`` (error, ``days_ago``) for one that has: at start, then once a day,
  and again when its expiry changes (a registry reload, a renewed certificate), when
  ``credentials.renewed`` says which expiries moved later;
- with ``ServerCertificate``, the TLS server certificate reloaded into the live
  ``ssl.SSLContext`` when its files change: OpenSSL uses a context's current certificate for
  each new handshake, so new connections get the renewed certificate and open ones carry on;
  no restart, no dropped connection. A renewed CA certificate is added to the context's trust
  store beside the old one (same key, so client certificates of either verify).

Subjects are agency ids or component names (``keys.expiry``); nothing here names a person.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Callable, Iterable, Mapping
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Final

import structlog
from cryptography import x509

from broker.config import Settings
from keys.expiry import (
    Credential,
    CredentialKind,
    Unreadable,
    certificate_files,
    days_left,
    expiring,
    read_certificate_file,
    read_credentials,
)
from keys.store import CA_CERT, REGISTRY, ROOT_PUBLIC, SERVER_CERT, SERVER_KEY, FileStore

__all__ = ["CredentialWatch", "ServerCertificate"]

log = structlog.get_logger(__name__)

_Stamp = tuple[tuple[str, int, int, int, int], ...]
_WATCHED: Final = (REGISTRY, ROOT_PUBLIC)  # besides every certificate file in the store


def _stamp(store: FileStore, names: tuple[str, ...]) -> _Stamp:
    """(name, mtime_ns, ctime_ns, size, inode) of each file that exists: a change of any,
    however it was made (os.replace, an edit in place), changes the stamp."""
    out = []
    for name in names:
        try:
            st = store.path(name).stat()
        except OSError:
            continue
        out.append((name, st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino))
    return tuple(out)


def _file_stamps(paths: Iterable[Path]) -> _Stamp:
    out = []
    for path in paths:
        try:
            st = path.stat()
        except OSError:
            continue
        out.append((str(path), st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino))
    return tuple(out)


class ServerCertificate:
    """The TLS server certificate of a live ``ssl.SSLContext``, reloaded when its files change."""

    def __init__(self, context: ssl.SSLContext, store: FileStore, passphrase: bytes) -> None:
        self.context = context
        self._store = store
        self._passphrase = passphrase
        self._loaded = _stamp(store, (SERVER_CERT, SERVER_KEY))
        self._ca = _stamp(store, (CA_CERT,))

    def reload_if_changed(self) -> bool:
        """Load the certificate and key again if their files changed; True if it did.

        The pair is first loaded into a scratch context: a certificate and key that do not
        match (a rotation caught between its two writes) leave the live context as it was,
        and the next look tries again.
        """
        reloaded = False
        ca = _stamp(self._store, (CA_CERT,))
        if ca != self._ca:
            try:
                self.context.load_verify_locations(cafile=str(self._store.path(CA_CERT)))
            except (OSError, ssl.SSLError) as exc:
                log.error("tls.ca_reload_failed", error=type(exc).__name__)
            else:
                self._ca = ca
                log.info("tls.ca_certificate_added")
        now = _stamp(self._store, (SERVER_CERT, SERVER_KEY))
        if now == self._loaded:
            return reloaded
        cert, key = str(self._store.path(SERVER_CERT)), str(self._store.path(SERVER_KEY))
        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
                cert, key, password=self._passphrase
            )
            self.context.load_cert_chain(cert, key, password=self._passphrase)
        except (OSError, ssl.SSLError) as exc:
            log.error("tls.server_certificate_reload_failed", error=type(exc).__name__)
            return reloaded
        self._loaded = now
        log.info("tls.server_certificate_reloaded")
        return True


class CredentialWatch:
    """Watches the key store's expiries; see the module docstring."""

    def __init__(
        self,
        store: FileStore,
        clock: Callable[[], datetime],
        *,
        warn_days: int,
        check_every_s: float = 60.0,
        root_kid: str | None = None,
        server: ServerCertificate | None = None,
        files: Mapping[CredentialKind, Path] | None = None,
    ) -> None:
        """``files`` are certificate files outside the key store to watch too (the Kafka
        clients' CA and certificate, ``for_settings``)."""
        self._store = store
        self._other_files = dict(files or {})
        self._clock = clock
        self.warn_days = warn_days
        self._check_every_s = check_every_s
        self._root_kid = root_kid
        self.server = server
        self._seen: _Stamp | None = None
        self._files: list[Credential] = []
        self._presented: dict[str, tuple[bytes, Credential]] = {}
        self.unreadable: list[Unreadable] = []
        # What was last logged of each credential (day, expiry), and of the unreadable files.
        self._logged: dict[tuple[CredentialKind, str], tuple[date, datetime]] = {}
        self._unreadable_logged: tuple[date, tuple[Unreadable, ...]] | None = None

    @classmethod
    def for_settings(
        cls,
        store: FileStore,
        clock: Callable[[], datetime],
        settings: Settings,
        *,
        server: ServerCertificate | None = None,
    ) -> CredentialWatch:
        """A watch with the settings' window, period and root pin, over ``store`` and the
        Kafka clients' CA and certificate files if set."""
        files = {
            kind: path
            for kind, path in (
                (CredentialKind.KAFKA_CA, settings.kafka_ssl_ca_file),
                (CredentialKind.KAFKA_CLIENT, settings.kafka_ssl_cert_file),
            )
            if path is not None
        }
        return cls(
            store,
            clock,
            warn_days=settings.credential_warn_days,
            check_every_s=settings.credential_check_every_s,
            root_kid=settings.registry_root_kid,
            server=server,
            files=files,
        )

    @property
    def credentials(self) -> list[Credential]:
        """What the files said when last read, each member certificate replaced by the one
        that member last presented to this process, if any."""
        presented = {c.subject: c for _der, c in self._presented.values()}
        kept = [
            c
            for c in self._files
            if not (c.kind is CredentialKind.MEMBER_TLS and c.subject in presented)
        ]
        return sorted([*kept, *presented.values()], key=lambda c: (c.kind.value, c.subject))

    def presented(self, agency: str, der: bytes) -> None:
        """``agency``'s TLS client certificate, as a verified handshake just showed it.

        The member certificates of a federation live in the agencies' own stores, not the
        broker's; the one an agency presents is the one that matters. Parsed only when it
        differs from the one that agency presented last.
        """
        known = self._presented.get(agency)
        if known is not None and known[0] == der:
            return
        try:
            certificate = x509.load_der_x509_certificate(der)
        except ValueError:
            return  # OpenSSL verified it; nothing else to learn from one it cannot parse
        self._presented[agency] = (
            der,
            Credential(CredentialKind.MEMBER_TLS, agency, certificate.not_valid_after_utc),
        )

    def look(self) -> list[Credential]:
        """Read the files again if any changed (and reload the server certificate); the
        credentials as last read."""
        if self.server is not None:
            self.server.reload_if_changed()
        stamp = (
            *_stamp(self._store, (*_WATCHED, *certificate_files(self._store))),
            *_file_stamps(self._other_files.values()),
        )
        if stamp != self._seen:
            self._files, self.unreadable = read_credentials(self._store, root_kid=self._root_kid)
            for kind, path in self._other_files.items():
                read = read_certificate_file(kind, path)
                if isinstance(read, Credential):
                    self._files.append(read)
                else:
                    self.unreadable.append(read)
            self._seen = stamp
        return self.credentials

    def seconds_left(self) -> list[tuple[Credential, float]]:
        """Each credential last read and its seconds left now (for the gauge and status)."""
        now = self._clock()
        return [(c, c.seconds_left(now)) for c in self.credentials]

    def soon(self) -> list[Credential]:
        """The credentials last read that expire within ``warn_days`` (or have), soonest first."""
        return expiring(self.credentials, self._clock(), timedelta(days=self.warn_days))

    def summary(self) -> list[dict[str, object]]:
        """What expires within ``warn_days`` (or has), soonest first, as JSON for the ops view."""
        now = self._clock()
        return [
            {
                "kind": c.kind.value,
                "subject": c.subject,
                "expires_at": c.expires_at.isoformat(),
                "seconds_left": int(c.seconds_left(now)),
            }
            for c in self.soon()
        ]

    def check(self) -> list[Credential]:
        """Look, then log each credential that expires soon: once a day, and again when its
        expiry changes (a reload). Returns what expires soon."""
        before = {(c.kind, c.subject): c.expires_at for c in self.credentials}
        current = tuple(self.look())
        now = self._clock()
        for c in current:
            was = before.get((c.kind, c.subject))
            if was is not None and c.expires_at > was:
                log.info(
                    "credentials.renewed",
                    kind=c.kind.value,
                    subject=c.subject,
                    expires_at=c.expires_at.isoformat(),
                )
        soon = expiring(current, now, timedelta(days=self.warn_days))
        today = now.date()
        unreadable = (today, tuple(self.unreadable))
        if self._unreadable_logged != unreadable:
            self._unreadable_logged = unreadable
            for problem in self.unreadable:
                log.error("credentials.unreadable", file=problem.name, reason=problem.reason)
        for c in soon:
            mark = (today, c.expires_at)
            if self._logged.get((c.kind, c.subject)) == mark:
                continue
            self._logged[(c.kind, c.subject)] = mark
            if c.expires_at <= now:
                log.error(
                    "credentials.expired",
                    kind=c.kind.value,
                    subject=c.subject,
                    days_ago=int((now - c.expires_at).total_seconds() // 86_400),
                    expires_at=c.expires_at.isoformat(),
                )
            else:
                log.warning(
                    "credentials.expiring",
                    kind=c.kind.value,
                    subject=c.subject,
                    days_left=days_left(c, now),
                    expires_at=c.expires_at.isoformat(),
                    warn_days=self.warn_days,
                )
        return soon

    async def run(self, stop: asyncio.Event) -> None:
        """Check now and every ``check_every_s`` until ``stop`` is set."""
        while not stop.is_set():
            try:
                self.check()
            except Exception as exc:  # a look that fails must not stop the next one
                log.error("credentials.check_failed", error=type(exc).__name__)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._check_every_s)
