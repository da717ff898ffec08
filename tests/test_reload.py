"""What a reload changes for mail going upstream: the provider's host and CA, at the next mail."""

from __future__ import annotations

from pathlib import Path

import trustme

from tests.harness import running_daemon, write_config
from tests.rawsmtp import rewrite_config
from tests.test_queue import FAST_RETRIES, eventually, send
from tests.test_server import provider_for
from tests.upstream import recording_upstream


async def test_a_provider_moved_to_another_server_gets_the_next_mail_despite_a_pooled_session(
    tmp_path: Path,
) -> None:
    ca = trustme.CA()
    old_dir, new_dir = tmp_path / "old", tmp_path / "new"
    old_dir.mkdir()
    new_dir.mkdir()
    async with (
        recording_upstream(ca, old_dir) as old,
        recording_upstream(ca, new_dir) as new,
    ):
        setup = write_config(tmp_path / "relay", {"lab": provider_for(old)}, queue=FAST_RETRIES)
        secret = setup.add_user("alice", "lab", "alice@example.org", "upstream-Pa55")
        async with running_daemon(setup) as daemon:
            assert (await send(daemon, secret, ["bob@example.net"])).startswith("250 ")
            # The session to the old server stays logged in, idle in relay's pool.
            rewrite_config(setup, providers={"lab": provider_for(new)})
            await daemon.reload()
            assert (await send(daemon, secret, ["carol@example.net"])).startswith("250 ")
            assert [mail.recipients for mail in old.handler.received] == [["bob@example.net"]]
            assert [mail.recipients for mail in new.handler.received] == [["carol@example.net"]]
            # ...and relay logged out of the old server rather than keep the session around.
            await eventually(lambda: old.handler.sessions[0].transport is None)


async def test_a_ca_file_replaced_in_place_is_read_again_at_reload(tmp_path: Path) -> None:
    trusted = tmp_path / "provider-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(trusted))  # not the CA the server's certificate has
    async with recording_upstream(trustme.CA(), tmp_path) as upstream:
        provider = {**provider_for(upstream), "ca_file": str(trusted)}
        setup = write_config(tmp_path / "relay", {"lab": provider}, queue=FAST_RETRIES)
        secret = setup.add_user("alice", "lab", "alice@example.org", "upstream-Pa55")
        async with running_daemon(setup) as daemon:
            reply = await send(daemon, secret, ["bob@example.net"])
            assert reply.startswith("250 ") and "queued as" in reply, reply
            assert "certificate" in reply, reply
            trusted.write_bytes(upstream.ca_file.read_bytes())  # ops install the right CA
            await daemon.reload()
            await eventually(lambda: len(upstream.handler.received) == 1)
    assert upstream.handler.received[0].recipients == ["bob@example.net"]
