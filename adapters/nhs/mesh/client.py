"""An asyncio face on NHS England's ``mesh-client`` (synchronous, requests-based).

Every call runs on one worker thread of its own (MESH's auth token carries a nonce count, so the
calls of one session are serialised), each HTTP request bounded by ``CAIRN_MESH_TIMEOUT_S``.
Bodies are bytes; nothing here logs a body, a password or the shared secret."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import mesh_client
import requests
from mesh_client import MeshClient

from adapters.nhs.mesh.settings import MeshSettings

__all__ = ["FHIR_JSON", "MeshError", "MeshMailbox", "MeshMessage"]

T = TypeVar("T")

FHIR_JSON = "application/fhir+json"
MAX_BODY = 20 * 1024 * 1024  # the bridge's largest FHIR message: a referral is a few kilobytes


class MeshError(Exception):
    """MESH could not be reached or refused a request (the message says which, no body)."""


@dataclass(frozen=True)
class MeshMessage:
    """One message read from the mailbox: its MESH metadata and its body."""

    message_id: str
    sender: str | None
    workflow_id: str | None
    local_id: str | None
    subject: str | None
    content_type: str | None
    body: bytes


class MeshMailbox:
    """The bridge's own MESH mailbox (``CAIRN_MESH_MAILBOX``)."""

    def __init__(self, settings: MeshSettings) -> None:
        if not settings.configured or settings.mailbox is None or settings.url is None:
            raise ValueError("CAIRN_MESH_URL is not set")
        self.mailbox = settings.mailbox
        cert: tuple[str, str] | None = None
        if settings.client_cert_file is not None and settings.client_key_file is not None:
            cert = (str(settings.client_cert_file), str(settings.client_key_file))
        verify: str | bool | None = str(settings.ca_file) if settings.ca_file else None
        self._client = MeshClient(
            settings.url,
            settings.mailbox,
            settings.password(),
            shared_key=settings.shared_secret(),
            cert=cert,
            verify=verify,
            max_retries=0,  # the bridge retries itself, with its own backoff
            timeout=settings.timeout_s,
            application_name="cairn-mesh-bridge",
        )
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mesh")

    async def _run(self, call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(
                self._thread, functools.partial(call, *args, **kwargs)
            )
        except requests.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else "?"
            raise MeshError(f"MESH answered HTTP {status} to {call.__name__}") from None
        except requests.RequestException as exc:
            raise MeshError(f"MESH unreachable ({type(exc).__name__}) in {call.__name__}") from None
        except mesh_client.MeshError:
            # mesh-client's own refusal (e.g. a send MESH answered 403): its text may hold
            # the server's body, so only the call is named.
            raise MeshError(f"MESH refused {call.__name__}") from None

    async def handshake(self) -> None:
        await self._run(self._client.handshake)

    async def list(self, workflow: str | None = None, limit: int = 500) -> list[str]:
        """Message ids waiting in the inbox (oldest first), at most ``limit`` of them."""
        ids = await self._run(
            self._client.list_messages, max_results=max(10, limit), workflow_filter=workflow
        )
        return list(ids)[:limit]

    async def fetch(self, message_id: str) -> MeshMessage:
        """One message, body included (refused past ``MAX_BODY``)."""

        def read() -> MeshMessage:
            message = self._client.retrieve_message(message_id)
            try:
                body = message.read(MAX_BODY + 1)
            finally:
                message.close()  # type: ignore[no-untyped-call]
            if len(body) > MAX_BODY:
                raise MeshError(f"MESH message larger than {MAX_BODY} bytes")
            return MeshMessage(
                message_id=message_id,
                sender=message.sender,
                workflow_id=message.workflow_id,
                local_id=message.local_id,
                subject=message.subject,
                content_type=message.content_type,
                body=body,
            )

        read.__name__ = "retrieve_message"
        return await self._run(read)

    async def send(
        self,
        recipient: str,
        body: bytes,
        workflow_id: str,
        *,
        local_id: str | None = None,
        subject: str | None = None,
        content_type: str = FHIR_JSON,
    ) -> str:
        """Send ``body`` to ``recipient``'s mailbox; the MESH message id."""
        extra: dict[str, str] = {"workflow_id": workflow_id, "content_type": content_type}
        if local_id is not None:
            extra["local_id"] = local_id
        if subject is not None:
            extra["subject"] = subject
        return await self._run(self._client.send_message, recipient, body, **extra)

    async def acknowledge(self, message_id: str) -> None:
        await self._run(self._client.acknowledge_message, message_id)

    async def track(self, message_id: str) -> dict[str, Any]:
        """MESH's tracking record of a message this mailbox sent (its ``status``...)."""
        return dict(await self._run(self._client.track_message, message_id))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._client.close()  # type: ignore[no-untyped-call]
        self._thread.shutdown(wait=False, cancel_futures=True)
