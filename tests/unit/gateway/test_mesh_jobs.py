"""The gateway store's MESH jobs and kept JWS (SQLite): created with the referral, survive a
restart, move from sending to sent to acknowledged, and go with a deleted disclosure; and
``cairn gateway`` gets its MESH channel from the CAIRN_MESH_* settings."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

from adapters.nhs.mesh.disclosures import DisclosureDelivery
from adapters.nhs.mesh.settings import DISCLOSURE_WORKFLOW, MeshSettings
from broker.config import Settings
from gateway.cli import build
from gateway.settings import GatewaySettings
from gateway.sqlite import SqliteGatewayStore
from gateway.store import GatewayStore
from gateway.web.security import WebSettings
from tests.conftest import FederationKeys
from tests.contracts.gateway_store import T0, new, rid

StoreFactory = Callable[[], GatewayStore]


async def test_a_mesh_job_is_made_with_the_referral_and_kept_across_a_restart(
    tmp_path: Path,
) -> None:
    """put(mesh=True) makes one due job and keeps the JWS; a second store on the same file sees
    the attempt begun, then the message id, then the acknowledgement; nothing is due after."""
    await jobs_survive_a_restart(lambda: SqliteGatewayStore(tmp_path / "gw.sqlite"))


async def test_a_given_up_job_is_not_due_and_a_deletion_takes_job_and_jws(tmp_path: Path) -> None:
    """A job given up with a reason code is never due again; deleting the disclosure deletes
    its job and its JWS with it."""
    await given_up_and_deleted(lambda: SqliteGatewayStore(tmp_path / "gw.sqlite"))


async def jobs_survive_a_restart(open_store: StoreFactory) -> None:
    store = open_store()
    await store.open()
    assert await store.put(replace(new(1), signed="h.p.s"), webhook=False, mesh=True)
    assert not await store.put(replace(new(1), signed="other"), webhook=False, mesh=True)
    assert await store.put(new(2), webhook=False)  # no MESH job, no JWS
    assert await store.signed(rid(1)) == "h.p.s"
    assert await store.signed(rid(2)) is None
    (job,) = await store.due_mesh(T0, 10)
    assert (job.referral_id, job.attempts, job.sending_at, job.message_id) == (
        rid(1),
        0,
        None,
        None,
    )
    await store.mesh_sending(rid(1), T0)
    await store.close()

    again = open_store()
    await again.open()
    (job,) = await again.due_mesh(T0, 10)
    assert (job.attempts, job.sending_at, job.message_id) == (1, T0, None)  # outcome unknown
    later = T0 + timedelta(seconds=5)
    await again.mesh_sent(rid(1), "MSG-1", at=T0, next_at=later)
    assert await again.due_mesh(T0, 10) == ()
    (job,) = await again.due_mesh(later, 10)
    assert job.message_id == "MSG-1"
    await again.mesh_later(rid(1), at=later, next_at=later + timedelta(seconds=5), error=None)
    await again.mesh_acknowledged(rid(1), later)
    assert await again.due_mesh(later + timedelta(days=1), 10) == ()
    state = await again.mesh_state(rid(1))
    assert state == {
        "attempts": 1,
        "message_id": "MSG-1",
        "sent": True,
        "acknowledged": True,
        "given_up": False,
        "last_error": None,
    }
    await again.close()


async def given_up_and_deleted(open_store: StoreFactory) -> None:
    store = open_store()
    await store.open()
    await store.put(replace(new(1), signed="h.p.s"), webhook=False, mesh=True)
    await store.mesh_later(rid(1), at=T0, next_at=None, error="mesh_undeliverable")
    assert await store.due_mesh(T0 + timedelta(days=9), 10) == ()
    state = await store.mesh_state(rid(1))
    assert state is not None
    assert (state["given_up"], state["last_error"]) == (True, "mesh_undeliverable")
    assert await store.delete(rid(1), T0, "retention-expired", b"token")
    assert await store.mesh_state(rid(1)) is None
    assert await store.signed(rid(1)) is None
    await store.close()


async def test_cairn_gateway_delivers_into_mesh_only_with_a_trust_mailbox(
    settings: Settings, federation_keys: FederationKeys, tmp_path: Path
) -> None:
    """build() with CAIRN_MESH_URL and CAIRN_MESH_TRUST_MAILBOX gives the gateway its MESH
    channel (the bridge's mailbox to the trust's, the disclosure workflow); without the trust
    mailbox, or without MESH, it has none."""
    (tmp_path / "password").write_text("password\n")
    (tmp_path / "secret").write_text("a shared secret\n")
    mesh = {
        "url": "http://127.0.0.1:9",
        "mailbox": "X26CAIRN01",
        "password_file": tmp_path / "password",
        "shared_secret_file": tmp_path / "secret",
    }
    gw = GatewaySettings(sqlite_path=tmp_path / "gw.sqlite")

    def built(**given: Any) -> Any:
        return build(
            settings,
            gw,
            "kelder-nhs",
            passphrase=federation_keys.passphrase,
            with_tls=False,
            web_settings=WebSettings(enabled=False),
            **given,
        ).gateway.mesh

    channel = built(mesh=MeshSettings(**mesh, trust_mailbox="X26KELDER1"))
    assert isinstance(channel, DisclosureDelivery)
    assert (channel.sender_mailbox, channel.trust_mailbox) == ("X26CAIRN01", "X26KELDER1")
    assert channel.workflow_id == DISCLOSURE_WORKFLOW
    await channel.close()
    assert built(mesh=MeshSettings(**mesh)) is None
    assert built(mesh=MeshSettings()) is None
    assert built() is None
