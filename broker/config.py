"""Effective configuration: ``CAIRN_*`` environment variables over a TOML file over defaults.

The TOML file is ``$CAIRN_CONFIG`` if set, else ``cairn.toml`` in the working directory if it
exists. Every limit is a named, typed setting with its unit in the name or the comment.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

__all__ = [
    "INSTALLED_FEDERATION_DIR",
    "KAFKA_BOOTSTRAP_ENV",
    "KAFKA_PORT_ENV",
    "KAFKA_SASL_MECHANISMS",
    "KAFKA_SECURITY_PROTOCOLS",
    "REPO_ROOT",
    "ConfigFileMissing",
    "Settings",
    "WitnessSetting",
    "config_file",
    "default_federation_dir",
    "default_state_dir",
    "https_url",
    "kafka_origin",
    "local_kafka_bootstrap",
    "read_secret_file",
    "source_checkout",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
#: Where an installed Cairn reads its federation definition unless CAIRN_FEDERATION_DIR says.
INSTALLED_FEDERATION_DIR: Final = Path("/etc/cairn/federation")


def source_checkout(root: Path | None = None) -> bool:
    """Whether Cairn runs from its source tree (``make demo``, ``make test``) rather than an
    installed package, whose parent folder is site-packages and no place for state."""
    root = REPO_ROOT if root is None else root
    return (root / "pyproject.toml").is_file() and (root / "deploy" / "federation").is_dir()


def default_state_dir() -> Path:
    """``<repo>/.cairn`` in a source checkout, else ``$XDG_STATE_HOME/cairn`` (by default
    ``~/.local/state/cairn``), never the package's own folder."""
    if source_checkout():
        return REPO_ROOT / ".cairn"
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "cairn"


def default_federation_dir() -> Path:
    """``<repo>/deploy/federation`` (the development federation) in a source checkout; an
    installed Cairn ships no federation and looks in /etc/cairn/federation."""
    return REPO_ROOT / "deploy" / "federation" if source_checkout() else INSTALLED_FEDERATION_DIR


KAFKA_SECURITY_PROTOCOLS: Final = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
KAFKA_SASL_MECHANISMS: Final = ("SCRAM-SHA-256", "SCRAM-SHA-512")
_MAX_SECRET_FILE_BYTES: Final = 4096  # a password file larger than this is not a password file


def _variable(field_name: str) -> str:
    """The environment variable of a setting (the TOML key is the field name itself)."""
    return f"CAIRN_{field_name.upper()}"


def _readable(field_name: str, path: Path) -> None:
    """Refuse, naming the setting's variable, a path that is not a file this process can read."""
    try:
        with path.open("rb") as fh:
            fh.read(1)
    except IsADirectoryError:
        raise ValueError(f"{_variable(field_name)}: {path} is a folder, not a file") from None
    except OSError as exc:
        raise ValueError(
            f"{_variable(field_name)}: cannot read {path} ({exc.strerror or type(exc).__name__})"
        ) from None


def read_secret_file(field_name: str, path: Path) -> str:
    """A secret kept in a file: its text without the trailing newline; ValueError naming the
    setting's variable if the file cannot be read, is not UTF-8 or is empty."""
    _readable(field_name, path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"{_variable(field_name)}: cannot read {path} ({exc.strerror})") from None
    if len(data) > _MAX_SECRET_FILE_BYTES:
        raise ValueError(
            f"{_variable(field_name)}: {path} is {len(data)} bytes, too large for a password file"
        )
    try:
        text = data.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        raise ValueError(f"{_variable(field_name)}: {path} is not UTF-8 text") from None
    if not text:
        raise ValueError(f"{_variable(field_name)}: {path} is empty")
    return text


_WITNESS_VKEY: Final = re.compile(r"^[^+\s]+\+[0-9a-f]{8}\+[A-Za-z0-9+/]{44}$")
_LOOPBACK_HOSTS: Final = ("127.0.0.1", "localhost", "::1")


class WitnessSetting(BaseModel):
    """One witness of the auditor's log: its verifier key and where to submit checkpoints.

    ``vkey`` is its C2SP signed-note verifier key for cosignature/v1 (``name+hex(key id)+
    base64(0x04 || Ed25519 key)``, as ``cairn witness vkey`` prints it; the auditor checks
    the key id when it starts); ``url`` is its tlog-witness submission prefix
    (``<url>/add-checkpoint``), https, or http to the loopback only.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    vkey: str = Field(max_length=200)
    url: str = Field(max_length=2000)

    @field_validator("vkey")
    @classmethod
    def _vkey(cls, value: str) -> str:
        material = value.split("+", 2)[-1]
        if _WITNESS_VKEY.fullmatch(value) is None or not _cosigner_material(material):
            raise ValueError(
                "a witness vkey is name+hex(key id)+base64(0x04 || key), as 'cairn witness "
                "vkey' prints it"
            )
        return value

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        parsed = urlsplit(value)
        loopback = parsed.scheme == "http" and parsed.hostname in _LOOPBACK_HOSTS
        if not (parsed.scheme == "https" or loopback) or not parsed.hostname:
            raise ValueError("a witness url is https://host[:port][/prefix] (http: loopback only)")
        if parsed.query or parsed.fragment:
            raise ValueError("a witness url is a prefix: no query or fragment")
        return value

    @property
    def name(self) -> str:
        """The witness's name (its cosignature lines carry it)."""
        return self.vkey.split("+", 1)[0]


def _cosigner_material(text: str) -> bool:
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return False
    return len(raw) == 33 and raw[0] == 0x04 and base64.b64encode(raw).decode() == text


def https_url(host: str, port: int) -> str:
    """``https://host:port`` for a client on this host: a wildcard listening address (0.0.0.0,
    ::) is reached at 127.0.0.1, an IPv6 address is bracketed (RFC 3986 section 3.2.2)."""
    if host in ("0.0.0.0", "::", ""):  # noqa: S104  (a listening wildcard, read as loopback)
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"https://{host}:{port}"


#: The variable ``deploy/kafka/kafka-local`` takes the local Kafka's client port from.
KAFKA_PORT_ENV: Final = "CAIRN_KAFKA_PORT"
KAFKA_BOOTSTRAP_ENV: Final = "CAIRN_KAFKA_BOOTSTRAP_SERVERS"


def local_kafka_bootstrap(environ: Mapping[str, str] | None = None) -> str | None:
    """``127.0.0.1:$CAIRN_KAFKA_PORT``, the local Kafka ``deploy/kafka/kafka-local`` runs
    (node 1 of a cluster: any one node bootstraps a client), or None if the variable is unset
    or not a port number."""
    value = (os.environ if environ is None else environ).get(KAFKA_PORT_ENV, "").strip()
    if not value.isdigit() or not 0 < int(value) < 65536:
        return None
    return f"127.0.0.1:{int(value)}"


class _LocalKafkaPort(PydanticBaseSettingsSource):
    """The lowest source: with CAIRN_KAFKA_PORT set and kafka_bootstrap_servers given nowhere
    else, Kafka is the local one on that port, so the port that started local Kafka and the
    address the commands use cannot silently disagree (an explicit bootstrap always wins)."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # pragma: no cover  (__call__ does the work)

    def __call__(self) -> dict[str, Any]:
        local = local_kafka_bootstrap()
        return {} if local is None else {"kafka_bootstrap_servers": local}


def kafka_origin(settings: Settings, environ: Mapping[str, str] | None = None) -> tuple[str, str]:
    """Where ``settings.kafka_bootstrap_servers`` came from, and a warning if CAIRN_KAFKA_PORT
    (the local Kafka) names a port the bootstrap servers do not list ('' if none)."""
    env = os.environ if environ is None else environ
    servers = settings.kafka_bootstrap_servers
    local = local_kafka_bootstrap(env)
    if KAFKA_BOOTSTRAP_ENV in env:
        origin = KAFKA_BOOTSTRAP_ENV
    elif "kafka_bootstrap_servers" not in settings.model_fields_set:
        origin = "the default"
    elif local is not None and servers == local:
        origin = f"from {KAFKA_PORT_ENV}"
    else:
        origin = "the configuration file"
    warning = ""
    if local is not None and origin != f"from {KAFKA_PORT_ENV}":
        ports = {s.strip().rsplit(":", 1)[-1] for s in servers.split(",")}
        # the local Kafka's other listeners (mutual TLS, SASL) are the same Kafka
        others = {env.get("CAIRN_KAFKA_SSL_PORT", ""), env.get("CAIRN_KAFKA_SASL_PORT", "")}
        if not ports & ({local.rsplit(":", 1)[1]} | others - {""}):
            warning = (
                f"{KAFKA_PORT_ENV}={env[KAFKA_PORT_ENV].strip()} (the local Kafka) is not among "
                f"them: {origin} wins; unset one of the two if that is not meant"
            )
    return origin, warning


class ConfigFileMissing(ValueError):
    """``CAIRN_CONFIG`` names a file that does not exist (a typo must not fall back silently
    to the defaults, which suit only the development federation)."""


def config_file(*, must_exist: bool = True) -> Path | None:
    """The TOML file in force, if any: ``$CAIRN_CONFIG``, else ``./cairn.toml`` if it exists.
    ``ConfigFileMissing`` if ``$CAIRN_CONFIG`` names no file (unless not ``must_exist``)."""
    explicit = os.environ.get("CAIRN_CONFIG")
    if explicit:
        path = Path(explicit)
        if must_exist and not path.is_file():
            what = "is a folder" if path.is_dir() else "does not exist"
            raise ConfigFileMissing(f"CAIRN_CONFIG names {path}, which {what}")
        return path
    local = Path("cairn.toml")
    return local if local.is_file() else None


class Settings(BaseSettings):
    """Everything an operator can set. Defaults suit the local development federation."""

    # hide_input_in_errors: a refused setting's message names it, never echoes the values given
    # (a password among them).
    model_config = SettingsConfigDict(
        env_prefix="CAIRN_", extra="forbid", frozen=True, hide_input_in_errors=True
    )

    # Kafka
    kafka_bootstrap_servers: str = Field(
        default="127.0.0.1:9092",
        description="Comma-separated host:port list of any Kafka cluster [default: "
        "127.0.0.1:$CAIRN_KAFKA_PORT when that is set (the local Kafka deploy/kafka/kafka-local "
        "runs), else 127.0.0.1:9092]; every command that uses Kafka prints the servers it uses",
    )
    # Kafka credentials (issue 14): mutual TLS and/or SASL SCRAM, secrets read from files.
    # Checked when the settings load (_kafka_credentials): a wrong one names its variable.
    kafka_security_protocol: str = Field(
        default="PLAINTEXT",
        description="PLAINTEXT, SSL (TLS, with a client certificate for mutual TLS), "
        "SASL_PLAINTEXT or SASL_SSL",
    )
    kafka_ssl_ca_file: Path | None = Field(
        default=None,
        description="PEM file of the CA(s) that issued Kafka's listener certificate "
        "[default: the system's trust store]",
    )
    kafka_ssl_cert_file: Path | None = Field(
        default=None,
        description="PEM client certificate presented to Kafka (mutual TLS); its subject CN "
        "is this component's Kafka principal, User:<CN>",
    )
    kafka_ssl_key_file: Path | None = Field(
        default=None,
        description="PEM private key of kafka_ssl_cert_file (PKCS#8, may be encrypted)",
    )
    kafka_ssl_key_password_file: Path | None = Field(
        default=None, description="A file holding the password of an encrypted kafka_ssl_key_file"
    )
    kafka_sasl_mechanism: str | None = Field(
        default=None, description="SCRAM-SHA-256 or SCRAM-SHA-512 (with SASL_SSL or SASL_PLAINTEXT)"
    )
    kafka_sasl_username: str | None = None  # the SCRAM user (with kafka_sasl_mechanism)
    kafka_sasl_password: SecretStr | None = None  # its password (prefer the _file form)
    kafka_sasl_password_file: Path | None = Field(
        default=None, description="A file holding kafka_sasl_password (set one of the two)"
    )
    topic_prefix: str = Field(
        default="cairn",
        pattern=r"^[a-zA-Z0-9._-]{1,64}$",
        description="Topics are <prefix>.deliver.<agency>, <prefix>.audit, ...",
    )
    topic_replication_factor: int = Field(default=1, ge=1, le=5)  # replicas per created topic
    transactional_id: str = Field(
        default="cairn-broker",
        pattern=r"^[A-Za-z0-9._-]{1,100}$",
        description="The base of every broker process's transactional ids, "
        "<base>.<host>.<slot> (broker.instance): the same on every broker of a deployment",
    )
    # Group commit (issue 13): claimed publishes share transactions
    group_commit_linger_s: float = Field(
        default=0.005, ge=0, le=1.0
    )  # seconds a submission waits for others to share its transaction (while none commits)
    group_commit_max_records: int = Field(
        default=1000, ge=1, le=100_000
    )  # Kafka records per shared transaction (each submission's records stay together)
    group_commit_max_bytes: int = Field(
        default=8_388_608, ge=65_536
    )  # bytes of records per shared transaction
    kafka_max_request_bytes: int = Field(
        default=1_048_576, ge=65_536
    )  # bytes: the largest record the broker sends (a larger disclosure is a 413)
    claim_lease_s: float = Field(
        default=30.0, gt=0
    )  # seconds after which another broker's unfinished claim of a referral id is settled
    ledger_partitions: int = Field(
        default=6,
        ge=1,
        le=256,
        description="Shards of the publication ledger topic <prefix>.ledger; fixed once the "
        "topic exists, the same on every broker",
    )
    kafka_connect_timeout_s: float = Field(default=10.0, gt=0)  # seconds
    publish_timeout_s: float = Field(default=15.0, gt=0)  # seconds: all acks or a 503
    readiness_timeout_s: float = Field(default=2.0, gt=0)  # seconds per /readyz probe
    readiness_probe_every_s: float = Field(
        default=5.0, gt=0, description="After a failed publish, seconds between probe transactions"
    )  # seconds
    # Kafka cluster (issue 13)
    topic_min_insync_replicas: int | None = Field(
        default=None,
        ge=1,
        le=5,
        description="Replicas that must hold a record before Kafka acknowledges it, set on "
        "each topic Cairn creates with replication over 1 [default: the replication factor "
        "less one, at least 1]; never more than topic_replication_factor",
    )  # replicas

    # HTTP
    http_host: str = "127.0.0.1"  # the address cairn serve (and the auditor) listen on
    http_port: int = Field(default=8443, ge=0, le=65535)  # the broker's HTTPS port (0: any)
    broker_url: str | None = Field(
        default=None,
        description="The broker's base URL for every command that calls it (`cairn send`, "
        "`cairn status`, the adapters' `--broker`, `cairn nhs mesh`) [default: "
        "https://HTTP_HOST:HTTP_PORT, the address `cairn serve` binds, 0.0.0.0 or :: read as "
        "127.0.0.1]",
    )
    shutdown_timeout_s: float = Field(default=20.0, gt=0)  # seconds to drain on SIGTERM

    # Plain-HTTP health port (issue 18): GET /livez and GET /readyz only, codes only, no TLS,
    # for an orchestrator's probes (deploy/k8s); each process reads it from its own environment
    health_host: str = "127.0.0.1"  # the address the health port listens on (0.0.0.0 in a pod)
    health_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="Plain-HTTP port of the process reading it (cairn serve, cairn auditor, "
        "cairn gateway, cairn witness serve) serving only GET /livez and GET /readyz, codes "
        "only; unset: no health port (0: any free one)",
    )

    # Signatures and replay
    max_signature_age_s: int = Field(default=300, ge=1)  # seconds a signed referral stays usable
    max_clock_skew_s: int = Field(default=60, ge=0)  # seconds a sender's clock may run ahead
    replay_window_s: int = Field(default=30 * 86400, ge=1)  # seconds referral ids are remembered
    state_prune_every_s: float = Field(
        default=3600.0, gt=0
    )  # seconds between prunes of the shared state past replay_window_s (one broker prunes)
    registry_root_kid: str | None = Field(
        default=None, description="Pin the federation root key by kid (recommended in production)"
    )

    # Auditor
    auditor_http_port: int = Field(default=8444, ge=0, le=65535)  # the auditor's HTTPS port
    checkpoint_every_entries: int = Field(default=1000, ge=1)  # leaves between checkpoints
    checkpoint_every_s: float = Field(default=10.0, gt=0)  # seconds between checkpoints
    # Witnesses (issue 17): C2SP tlog-witness servers the auditor submits each checkpoint to
    auditor_witnesses: tuple[WitnessSetting, ...] = Field(
        default=(),
        max_length=16,
        description="The witnesses that cosign the auditor's checkpoints, each its "
        "cosignature/v1 verifier key and submission URL; in the environment a JSON list, "
        '[{"vkey": "...", "url": "https://..."}] [default: none, checkpoints are not cosigned]',
    )
    auditor_witness_quorum: int = Field(
        default=1, ge=1, le=16
    )  # witnesses whose cosignatures make a checkpoint witnessed (below it: a warning)
    auditor_witness_timeout_s: float = Field(
        default=5.0, gt=0, le=120
    )  # seconds for each request to a witness; a witness down costs at most twice this
    auditor_witness_ca_file: Path | None = Field(
        default=None,
        description="PEM file of the CA(s) that issued the witnesses' TLS certificates "
        "[default: the system's trust store]",
    )

    # Delivery deadlines (Operation Encompass: the start of the next school day, from the policy)
    deadline_marac_s: int = Field(default=86_400, ge=1)  # seconds to acknowledge MARAC
    deadline_idva_high_s: int = Field(default=86_400, ge=1)  # seconds to acknowledge high-risk IDVA
    overdue_sweep_every_s: float = Field(default=30.0, gt=0)  # seconds between overdue sweeps
    ops_refresh_s: float = Field(default=10.0, gt=0)  # seconds Kafka lag figures are cached
    calendar_warn_days: int = Field(
        default=60,
        ge=0,
        description="Days before the school calendar's last term ends that the broker warns",
    )  # days; `cairn policy check` warns in the same window

    # Credential expiry (issue 14): the registry, the CA, TLS certificates, active keys
    credential_warn_days: int = Field(
        default=14,
        ge=0,
        le=3650,
        description="Days before the registry, the CA, a TLS certificate or an active key "
        "expires that the broker, the auditor and `cairn status` warn (and within which "
        "`cairn keys refresh` renews certificates)",
    )  # days
    credential_check_every_s: float = Field(
        default=60.0, gt=0, le=86_400
    )  # seconds between looks at the key store's registry and certificates: a renewed TLS
    # server certificate is served to new connections from the next look, without a restart

    # Limits
    max_body_bytes: int = Field(default=1_048_576, gt=0)  # bytes per submission
    max_recipients: int = Field(default=16, ge=1)  # recipients per referral

    # Input bounds (issue 12: hostile input is a typed 4xx, never a 500)
    # String lengths and the years a date may name are fixed in the models and the exported
    # JSON Schema (schemas.fields), so that the schema and the broker refuse the same values.
    max_jose_header_bytes: int = Field(
        default=4096, ge=256, le=65_536
    )  # bytes of a JWS protected header, base64url-encoded as sent
    max_json_depth: int = Field(
        default=16, ge=4, le=128
    )  # levels of nested arrays and objects in a JWS header or a submission body
    max_json_integer: int = Field(
        default=2**53, ge=2**32, le=2**53
    )  # largest magnitude of an integer in a JWS header (2^53: I-JSON, RFC 7493 §2.2)

    # HTTP server timeouts and connection limits (issue 12: slow clients are cut off)
    # Defaults leave room for an agency on a slow link; broker.web.server enforces them.
    http_tls_handshake_timeout_s: float = Field(
        default=10.0, gt=0, le=120
    )  # seconds from accepting a connection to a completed TLS handshake (and to close one)
    http_header_timeout_s: float = Field(
        default=10.0, gt=0, le=300
    )  # seconds to a complete request head, from connecting or from the head's first byte
    http_keepalive_idle_s: float = Field(
        default=15.0, gt=0, le=3600
    )  # seconds a kept-alive connection may wait, after a response, for the next request
    http_body_grace_s: float = Field(
        default=10.0, gt=0, le=300
    )  # seconds a request body may take before the minimum rate applies
    http_body_min_rate_bytes_per_s: int = Field(
        default=1024, ge=1, le=1_073_741_824
    )  # bytes per second a request body must average once the grace is over
    http_max_connections_per_client: int = Field(
        default=16, ge=1, le=10_000
    )  # open connections per agency (verified client certificate); more get a 429
    http_max_connections: int = Field(
        default=512, ge=1, le=100_000
    )  # open connections in all, handshakes included; more are closed when accepted
    http_max_header_bytes: int = Field(
        default=8190, ge=1024, le=65_536
    )  # bytes of the request line and of any one header field; more is a 431 (or 414)
    http_max_headers: int = Field(default=64, ge=8, le=1024)  # header fields per request

    # Kafka consumers: dead letters and reconnection (issue 12)
    consumer_retry_initial_s: float = Field(
        default=0.5, gt=0, le=60
    )  # seconds a consumer pauses before its first reconnection; doubles after each failure
    consumer_retry_max_s: float = Field(
        default=30.0, gt=0, le=600
    )  # seconds: the longest pause between reconnections
    consumer_stall_s: float = Field(
        default=30.0, gt=0, le=3600
    )  # seconds a consumer may read nothing while behind (or Kafka silent) before it reconnects
    consumer_kafka_wait_s: float = Field(
        default=900.0, gt=0, le=86_400
    )  # seconds 'cairn inbox' waits for Kafka before giving up (services wait for ever)

    # Broker processes (issue 13): instance slots and `cairn serve --workers`
    instance_slots: int = Field(
        default=64, ge=1, le=4096
    )  # broker processes one host may run on one state folder (each holds a slot's lock)
    broker_workers: int = Field(
        default=1, ge=1, le=64
    )  # worker processes of `cairn serve` on one port (`--workers` overrides it)
    worker_start_timeout_s: float = Field(
        default=60.0, gt=0, le=600
    )  # seconds a worker has from being started to listening; later, it is a failed start
    worker_start_attempts: int = Field(
        default=5, ge=1, le=100
    )  # failed starts in a row of one worker after which `cairn serve` gives up (exit 3)
    worker_restart_initial_s: float = Field(
        default=0.5, gt=0, le=60
    )  # seconds before restarting a worker that died; doubles while it keeps dying
    worker_restart_max_s: float = Field(
        default=30.0, gt=0, le=600
    )  # seconds: the longest pause before a restart; a worker up this long is healthy again

    # Shared state (issue 13): SQLite under state_dir, or PostgreSQL shared by many brokers
    database_url: SecretStr | None = Field(
        default=None,
        description="PostgreSQL URL (postgresql://USER:PASSWORD@HOST:PORT/DB) of the state "
        "every broker shares; unset: SQLite at <state_dir>/broker/state.sqlite",
    )
    database_url_file: Path | None = Field(
        default=None, description="A file holding database_url (set one of the two, not both)"
    )
    database_pool_size: int = Field(
        default=10, ge=1, le=200
    )  # PostgreSQL connections per broker process
    database_timeout_s: float = Field(
        default=5.0, gt=0, le=120
    )  # seconds to connect to PostgreSQL or wait for a pooled connection; then a 503
    sqlite_busy_timeout_s: float = Field(
        default=10.0, gt=0, le=300
    )  # seconds a SQLite writer waits for another process's write lock; then a 503

    # Files
    state_dir: Path = Field(
        default_factory=default_state_dir,
        description="Logs, the state store, the audit log, local Kafka data [default: "
        "<repo>/.cairn in a source checkout, else $XDG_STATE_HOME/cairn, ~/.local/state/cairn]",
    )
    key_dir: Path | None = Field(
        default=None,
        description="Key stores folder, one sub-folder per store (public, root, ca, pseudonym, "
        "broker, auditor, agencies/<id>; README 'Key custody') [default: <state_dir>/keys]",
    )
    passphrase_dir: Path | None = Field(
        default=None,
        description="One passphrase file per key store, named as the store (broker, pseudonym, "
        "agencies/<id>, ...); a store without one uses CAIRN_KEY_PASSPHRASE[_FILE] "
        "[default: <state_dir>/passphrases]",
    )
    public_key_dir: Path | None = Field(
        default=None,
        description="The published registry, root public key and CA certificate, as the "
        "federation administrator publishes them [default: <key_dir>/public]",
    )
    federation_dir: Path = Field(
        default_factory=default_federation_dir,
        description="The federation definition: agencies.yaml, agreements/, "
        "school-calendar.yaml [default: <repo>/deploy/federation in a source checkout, else "
        "/etc/cairn/federation]",
    )

    # Logging
    log_format: str = Field(
        default="auto",
        pattern="^(auto|json|console)$",
        description="json (one object a line) or console; auto: console on a terminal, else json",
    )
    log_level: str = Field(
        default="info",
        pattern="^(debug|info|warning|error)$",
        description="The least severe level logged: debug, info, warning or error",
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = config_file()
        if path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        sources.append(_LocalKafkaPort(settings_cls))  # below all: only when nothing else says
        return tuple(sources)

    @field_validator("broker_url")
    @classmethod
    def _broker_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme != "https" or not parts.hostname or parts.path not in ("", "/"):
            raise ValueError(
                "must be the broker's https://HOST[:PORT] base URL (mutual TLS), no path"
            )
        try:
            parts.port  # noqa: B018  (a port out of range raises)
        except ValueError:
            raise ValueError("its port is not a port number") from None
        return value.rstrip("/")

    @field_validator("kafka_security_protocol")
    @classmethod
    def _known_security_protocol(cls, value: str) -> str:
        if value not in KAFKA_SECURITY_PROTOCOLS:
            raise ValueError(
                f"CAIRN_KAFKA_SECURITY_PROTOCOL must be one of "
                f"{', '.join(KAFKA_SECURITY_PROTOCOLS)}, not {value!r}"
            )
        return value

    @field_validator("kafka_sasl_mechanism")
    @classmethod
    def _known_sasl_mechanism(cls, value: str | None) -> str | None:
        if value is not None and value not in KAFKA_SASL_MECHANISMS:
            raise ValueError(
                f"CAIRN_KAFKA_SASL_MECHANISM must be one of {', '.join(KAFKA_SASL_MECHANISMS)}, "
                f"not {value!r}"
            )
        return value

    @model_validator(mode="after")
    def _kafka_credentials(self) -> Settings:
        """Kafka's credentials hang together and every file they name can be read, so that a
        wrong one stops the process at start, naming its variable, not at the first connect."""
        protocol = self.kafka_security_protocol
        tls = protocol in ("SSL", "SASL_SSL")
        sasl = protocol.startswith("SASL_")
        files = {
            "kafka_ssl_ca_file": self.kafka_ssl_ca_file,
            "kafka_ssl_cert_file": self.kafka_ssl_cert_file,
            "kafka_ssl_key_file": self.kafka_ssl_key_file,
            "kafka_ssl_key_password_file": self.kafka_ssl_key_password_file,
        }
        if not tls:
            for name, path in files.items():
                if path is not None:
                    raise ValueError(
                        f"{_variable(name)} is set but CAIRN_KAFKA_SECURITY_PROTOCOL is "
                        f"{protocol}: TLS files need SSL or SASL_SSL"
                    )
        if (self.kafka_ssl_cert_file is None) != (self.kafka_ssl_key_file is None):
            raise ValueError(
                "CAIRN_KAFKA_SSL_CERT_FILE and CAIRN_KAFKA_SSL_KEY_FILE go together: "
                "set both (mutual TLS) or neither"
            )
        if self.kafka_ssl_key_password_file is not None and self.kafka_ssl_key_file is None:
            raise ValueError(
                "CAIRN_KAFKA_SSL_KEY_PASSWORD_FILE is set without CAIRN_KAFKA_SSL_KEY_FILE"
            )
        for name, path in files.items():
            if path is not None:
                _readable(name, path)
        if self.kafka_ssl_key_password_file is not None:
            read_secret_file("kafka_ssl_key_password_file", self.kafka_ssl_key_password_file)
        sasl_values = {
            "kafka_sasl_mechanism": self.kafka_sasl_mechanism,
            "kafka_sasl_username": self.kafka_sasl_username,
            "kafka_sasl_password": self.kafka_sasl_password,
            "kafka_sasl_password_file": self.kafka_sasl_password_file,
        }
        if not sasl:
            for name, value in sasl_values.items():
                if value is not None:
                    raise ValueError(
                        f"{_variable(name)} is set but CAIRN_KAFKA_SECURITY_PROTOCOL is "
                        f"{protocol}: SASL settings need SASL_SSL or SASL_PLAINTEXT"
                    )
            return self
        if self.kafka_sasl_mechanism is None:
            raise ValueError(
                f"CAIRN_KAFKA_SECURITY_PROTOCOL is {protocol}: set CAIRN_KAFKA_SASL_MECHANISM "
                f"({' or '.join(KAFKA_SASL_MECHANISMS)})"
            )
        if not self.kafka_sasl_username:
            raise ValueError(
                f"CAIRN_KAFKA_SECURITY_PROTOCOL is {protocol}: set CAIRN_KAFKA_SASL_USERNAME"
            )
        if (self.kafka_sasl_password is None) == (self.kafka_sasl_password_file is None):
            raise ValueError(
                "set one of CAIRN_KAFKA_SASL_PASSWORD_FILE (recommended) and "
                "CAIRN_KAFKA_SASL_PASSWORD, not both and not neither"
            )
        if self.kafka_sasl_password_file is not None:
            read_secret_file("kafka_sasl_password_file", self.kafka_sasl_password_file)
        return self

    def kafka_sasl_secret(self) -> str | None:
        """The SASL password, from its file (read now) or the setting; None without SASL."""
        if self.kafka_sasl_password_file is not None:
            return read_secret_file("kafka_sasl_password_file", self.kafka_sasl_password_file)
        if self.kafka_sasl_password is not None:
            return self.kafka_sasl_password.get_secret_value()
        return None

    def kafka_ssl_key_password(self) -> str | None:
        """The password of the Kafka client key, from its file (read now), if one is set."""
        if self.kafka_ssl_key_password_file is None:
            return None
        return read_secret_file("kafka_ssl_key_password_file", self.kafka_ssl_key_password_file)

    @model_validator(mode="after")
    def _min_insync_within_replication(self) -> Settings:
        wanted = self.topic_min_insync_replicas
        if wanted is not None and wanted > self.topic_replication_factor:
            raise ValueError(
                f"topic_min_insync_replicas ({wanted}) is more than topic_replication_factor "
                f"({self.topic_replication_factor}): Kafka would refuse every write to such a "
                "topic; lower it or raise the replication factor"
            )
        return self

    @model_validator(mode="after")
    def _lease_outlasts_a_publish(self) -> Settings:
        if self.claim_lease_s < 2 * self.publish_timeout_s:
            raise ValueError(
                f"claim_lease_s ({self.claim_lease_s:g}) must be at least twice "
                f"publish_timeout_s ({self.publish_timeout_s:g}): a broker's claim of a "
                "referral id must outlast its publish, or another broker would settle it "
                "while it is still being published"
            )
        return self

    @model_validator(mode="after")
    def _replay_window_outlasts_a_signature(self) -> Settings:
        usable = self.max_signature_age_s + self.max_clock_skew_s
        if self.replay_window_s <= usable:
            raise ValueError(
                f"replay_window_s ({self.replay_window_s}) must be more than "
                f"max_signature_age_s plus max_clock_skew_s ({usable}): a referral id forgotten "
                "while its signature is still accepted could be replayed"
            )
        return self

    @model_validator(mode="after")
    def _witnesses_hang_together(self) -> Settings:
        witnesses = self.auditor_witnesses
        for what, values in (
            ("name", [w.name for w in witnesses]),
            ("url", [w.url.rstrip("/") for w in witnesses]),
        ):
            if len(values) != len(set(values)):
                raise ValueError(f"CAIRN_AUDITOR_WITNESSES: two witnesses have the same {what}")
        if witnesses and self.auditor_witness_quorum > len(witnesses):
            raise ValueError(
                f"auditor_witness_quorum ({self.auditor_witness_quorum}) is more than the "
                f"{len(witnesses)} witnesses configured: no checkpoint could reach it"
            )
        if self.auditor_witness_ca_file is not None:
            _readable("auditor_witness_ca_file", self.auditor_witness_ca_file)
        return self

    @property
    def min_insync_replicas(self) -> int:
        """``min.insync.replicas`` for the topics Cairn creates: the setting, or the replication
        factor less one (so one replica may be lost without stopping writes), at least 1."""
        if self.topic_min_insync_replicas is not None:
            return self.topic_min_insync_replicas
        return max(1, self.topic_replication_factor - 1)

    @property
    def served_url(self) -> str:
        """Where ``cairn serve`` with these settings is reached from this host:
        https://HTTP_HOST:HTTP_PORT, a wildcard host (0.0.0.0, ::) read as 127.0.0.1."""
        return https_url(self.http_host, self.http_port)

    @property
    def broker_client_url(self) -> str:
        """The broker every command that calls it uses: CAIRN_BROKER_URL, else ``served_url``."""
        return self.broker_url if self.broker_url is not None else self.served_url

    @property
    def keys_path(self) -> Path:
        return self.key_dir if self.key_dir is not None else self.state_dir / "keys"

    @property
    def passphrases_path(self) -> Path:
        return (
            self.passphrase_dir
            if self.passphrase_dir is not None
            else self.state_dir / "passphrases"
        )

    def shown(self) -> dict[str, Any]:
        """The effective settings as plain values, secrets masked, for ``cairn config show``."""
        shown: dict[str, Any] = {}
        for name, value in self.model_dump().items():
            if isinstance(value, SecretStr):
                shown[name] = "********"
            elif isinstance(value, Path):
                shown[name] = str(value)
            else:
                shown[name] = value
        return shown
