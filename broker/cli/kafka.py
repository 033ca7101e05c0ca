"""``cairn kafka``: the local Kafka's mutual-TLS listener material and the ACL table.

``cairn kafka tls`` issues the listener's certificate (and service client certificates)
from the federation CA (``broker.kafka.tls``); ``deploy/kafka/kafka-local`` runs it when it
starts Kafka with ``CAIRN_KAFKA_SSL_PORT``. ``cairn kafka acls`` prints the ACLs
``cairn topics create`` applies (``broker.kafka.acls``), or applies them alone.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import click

from broker.cli.common import settings_or_exit
from schemas.errors import CairnError

__all__ = ["kafka"]


@click.group(name="kafka", context_settings={"help_option_names": ["-h", "--help"]})
def kafka() -> None:
    """Kafka's TLS listener and ACLs (README "Local Kafka")."""


def _client(value: str) -> tuple[str, str]:
    client_id, sep, role = value.partition(":")
    if not sep or not client_id or not role:
        raise click.BadParameter(f"expected ID:ROLE (such as cairn-broker:broker), not {value!r}")
    return client_id, role


@kafka.command("tls")
@click.option(
    "--out",
    "folder",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for ca.pem, server.p12 and server.password (git-ignored state).",
)
@click.option(
    "--client",
    "clients",
    multiple=True,
    metavar="ID:ROLE",
    help="Also issue a Kafka client certificate for this service into its own key store "
    "(tls/clients/ID.crt, .key under that store's passphrase), e.g. cairn-broker:broker. "
    "Repeatable.",
)
def tls(folder: Path, clients: tuple[str, ...]) -> None:
    """Issue (or keep, while still good) the TLS listener's key and certificate from the
    federation CA (the 'ca' key store and its passphrase: README "Key custody")."""
    from broker.federation import load_federation
    from broker.kafka.tls import ServiceClient, issue_listener_tls
    from broker.trust import custody_of
    from keys.custody import CA, store_of

    settings = settings_or_exit()
    wanted = [_client(c) for c in clients]
    try:
        federation = load_federation(settings.federation_dir)
        custody = custody_of(settings)
        services = [
            ServiceClient(
                client_id,
                role,
                custody.member_store(client_id),
                custody.passphrase(store_of(client_id)),
            )
            for client_id, role in wanted
        ]
        result = issue_listener_tls(
            custody.store(CA),
            custody.passphrase(CA),
            folder,
            federation.name,
            now=datetime.now(UTC),
            clients=services,
        )
    except CairnError as exc:
        raise click.ClickException(str(exc)) from None
    if result.issued:
        click.echo(f"issued: {', '.join(result.issued)}")
    else:
        click.echo(f"kept {folder}: issued by the federation CA and still good")


@kafka.command("acls")
@click.option("--apply", "apply_now", is_flag=True, help="Create them in Kafka now.")
@click.option(
    "--prune",
    is_flag=True,
    help="Also delete the grants on Cairn's topics, groups and transactional ids that the "
    "table no longer holds (an agency that left the federation).",
)
def acls(apply_now: bool, prune: bool) -> None:
    """Print the ACLs the federation needs (what 'cairn topics create' applies)."""
    from broker.federation import load_federation
    from broker.kafka.acls import apply_acls, describe_grant, federation_acls, prune_acls

    settings = settings_or_exit()
    try:
        federation = load_federation(settings.federation_dir)
        table = federation_acls(federation, settings.topic_prefix, settings.transactional_id)
        for binding in table:
            click.echo(str(binding))
        if apply_now or prune:
            count = asyncio.run(apply_acls(settings, table))
            click.echo(f"{count} ACLs applied on {settings.kafka_bootstrap_servers}")
        if prune:
            removed = asyncio.run(prune_acls(settings, table))
            for grant in removed:
                click.echo(f"removed: {describe_grant(grant)}")
            click.echo(f"{len(removed)} stale ACLs removed")
    except CairnError as exc:
        raise click.ClickException(str(exc)) from None


@kafka.command("env")
@click.option(
    "--as", "member", required=True, help="An agency's id, cairn-broker or cairn-auditor."
)
@click.option(
    "--bootstrap",
    required=True,
    metavar="HOST:PORT",
    help="The mutual-TLS listener (kafka-local ssl-bootstrap).",
)
def env(member: str, bootstrap: str) -> None:
    """Print the CAIRN_KAFKA_* settings (as shell exports) with which MEMBER reaches Kafka's
    mutual-TLS listener as itself: its certificate and key from its own key store."""
    import os
    import shlex

    from broker.kafka.tls import member_kafka_tls
    from broker.trust import custody_of

    settings = settings_or_exit()
    try:
        files = member_kafka_tls(custody_of(settings), member, os.environ)
    except CairnError as exc:
        raise click.ClickException(str(exc)) from None
    values = {
        "kafka_bootstrap_servers": bootstrap,
        "kafka_security_protocol": "SSL",
        **{name: str(path) for name, path in files.items()},
    }
    for name, value in values.items():
        click.echo(f"export CAIRN_{name.upper()}={shlex.quote(value)}")
