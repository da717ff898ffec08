"""The `relay` command line as an operator uses it."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from relay.cli import users as cli_users
from relay.cli.command import main
from relay.state.keys import load_key
from relay.state.localauth import verify_stored_hash
from relay.state.sealing import UPSTREAM_CREDENTIAL, user_context
from relay.state.store import Store
from tests.harness import RelaySetup, write_config

LAB = {"smtp": {"host": "mail.example.org", "port": 587, "tls": "starttls"}}


@pytest.fixture
def setup(tmp_path: Path) -> RelaySetup:
    """An initialised relay with an explicit provider 'lab' and a gmail preset 'agency'."""
    return write_config(tmp_path, {"lab": LAB, "agency": {"preset": "gmail"}})


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_init_creates_private_state_dir_database_and_key(setup: RelaySetup) -> None:
    assert mode(setup.state_dir) == 0o700
    assert mode(setup.state_dir / "relay.db") == 0o600
    assert mode(setup.key_file) == 0o600
    assert len(setup.key_file.read_bytes()) == 32


def test_second_init_refuses_to_replace_the_key(setup: RelaySetup) -> None:
    before = setup.key_file.read_bytes()
    result = setup.cli("init")
    assert result.status != 0
    assert "refusing to overwrite" in result.err
    assert setup.key_file.read_bytes() == before


def test_user_add_prints_the_local_secret_once_and_seals_the_password(setup: RelaySetup) -> None:
    secret = setup.add_user("alice", "lab", "alice@example.org", "upstream pass word")
    assert len(secret) >= 22 and " " not in secret
    store = Store.open(setup.state_dir / "relay.db")
    user = store.get_user("alice")
    store.close()
    assert verify_stored_hash(user.local_hash, secret.encode())
    assert user.sealed_secret is not None
    opened = load_key(setup.key_file).open(
        user.sealed_secret, user_context(user, UPSTREAM_CREDENTIAL)
    )
    assert opened.reveal() == "upstream pass word"
    shown = setup.cli("user", "show", "alice")
    assert shown.status == 0 and secret not in shown.out and "upstream pass word" not in shown.out
    assert "stored, sealed" in shown.out


def test_user_list_shows_state_without_secrets(setup: RelaySetup) -> None:
    setup.add_user("alice", "lab", "alice@example.org", "pw-alice")
    setup.add_user("bob", "lab", "bob@example.org", "pw-bob")
    assert setup.cli("user", "disable", "bob").status == 0
    listing = setup.cli("user", "list").out.splitlines()
    # The last column is the last `relay check`: "-" for never checked.
    assert listing[1].split() == ["alice", "lab", "alice@example.org", "enabled", "-"]
    assert listing[2].split() == ["bob", "lab", "bob@example.org", "disabled", "-"]
    assert "pw-" not in "\n".join(listing)


def test_gmail_preset_refuses_an_address_at_another_domain(setup: RelaySetup) -> None:
    result = setup.cli(
        "user",
        "add",
        "alice",
        "--provider",
        "agency",
        "--email",
        "alice@example.org",
        "--password-stdin",
        stdin="pw\n",
    )
    assert result.status == 1
    assert "gmail" in result.err and "alice@example.org" in result.err


def test_unknown_provider_lists_the_configured_ones(setup: RelaySetup) -> None:
    result = setup.cli(
        "user",
        "add",
        "alice",
        "--provider",
        "nope",
        "--email",
        "a@example.org",
        "--password-stdin",
        stdin="pw\n",
    )
    assert result.status == 1
    assert "unknown provider 'nope'" in result.err and "agency, lab" in result.err


def test_display_name_with_a_line_break_is_refused(setup: RelaySetup) -> None:
    result = setup.cli(
        "user",
        "add",
        "alice",
        "--provider",
        "lab",
        "--email",
        "alice@example.org",
        "--display-name",
        "Alice\r\nBcc: victim@example.net",
        "--password-stdin",
        stdin="pw\n",
    )
    assert result.status == 1 and "--display-name" in result.err


def test_new_secret_replaces_the_old_one(setup: RelaySetup) -> None:
    old = setup.add_user("alice", "lab", "alice@example.org", "pw")
    result = setup.cli("user", "new-secret", "alice")
    new = result.out.strip()
    store = Store.open(setup.state_dir / "relay.db")
    stored = store.get_user("alice").local_hash
    store.close()
    assert new != old
    assert verify_stored_hash(stored, new.encode())
    assert not verify_stored_hash(stored, old.encode())


def test_chosen_local_password_is_stored_with_a_slow_hash_and_not_printed(
    setup: RelaySetup, tmp_path: Path
) -> None:
    chosen = tmp_path / "local.txt"
    chosen.write_text("a long chosen local secret\n")
    result = setup.cli(
        "user",
        "add",
        "alice",
        "--provider",
        "lab",
        "--email",
        "alice@example.org",
        "--password-stdin",
        "--local-password-file",
        str(chosen),
        stdin="pw\n",
    )
    assert result.status == 0 and result.out == ""
    shown = setup.cli("user", "show", "alice").out
    assert "chosen (scrypt hash)" in shown


def test_set_password_reseals_the_new_upstream_password(setup: RelaySetup, tmp_path: Path) -> None:
    setup.add_user("alice", "lab", "alice@example.org", "old-pw")
    new_file = tmp_path / "new.txt"
    new_file.write_text("new-pw\n")
    assert setup.cli("user", "set-password", "alice", "--password-file", str(new_file)).status == 0
    store = Store.open(setup.state_dir / "relay.db")
    alice = store.get_user("alice")
    store.close()
    assert alice.sealed_secret is not None
    key = load_key(setup.key_file)
    opened = key.open(alice.sealed_secret, user_context(alice, UPSTREAM_CREDENTIAL))
    assert opened.reveal() == "new-pw"


def test_commands_on_an_unknown_user_fail_with_its_name(setup: RelaySetup) -> None:
    for action in ("show", "remove", "enable", "disable"):
        result = setup.cli("user", action, "ghost")
        assert result.status == 1 and "'ghost'" in result.err


def test_config_check_prints_the_resolved_preset(setup: RelaySetup) -> None:
    result = setup.cli("config", "check")
    assert result.status == 0
    assert "smtp.gmail.com" in result.out


def test_config_check_names_file_and_key_of_a_bad_value(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("providers:\n  lab:\n    smtp: {host: h, port: abc, tls: starttls}\n")
    result = RelaySetup(tmp_path).cli("config", "check")
    assert result.status == 1
    assert str(config) in result.err and "providers.lab.smtp.port" in result.err


def test_missing_config_file_says_where_it_looked(tmp_path: Path) -> None:
    result = RelaySetup(tmp_path / "nowhere").cli("user", "list")
    assert result.status == 1 and "nowhere/config.yaml" in result.err


def test_user_add_keeps_sent_settings_and_show_prints_the_resulting_plan(
    setup: RelaySetup,
) -> None:
    setup.add_user("alice", "agency", "alice@gmail.com", "pw")
    setup.add_user(
        "bob", "agency", "bob@gmail.com", "pw", "--sent-copy", "always", "--sent-folder", "Envoyés"
    )
    alice = setup.cli("user", "show", "alice").out
    assert "sent copy:         auto (provider setting): skip" in alice
    assert "sent folder:       - (found by relay)" in alice
    bob = setup.cli("user", "show", "bob").out
    assert "sent copy:         always (user setting): append" in bob
    assert "sent folder:       Envoyés" in bob


def test_sent_copy_always_is_refused_for_a_provider_without_imap(setup: RelaySetup) -> None:
    result = setup.cli(
        "user", "add", "carol", "--provider", "lab", "--email", "carol@example.org",
        "--password-stdin", "--sent-copy", "always",
        stdin="pw\n",
    )  # fmt: skip
    assert result.status == 1
    assert "--sent-copy always: provider 'lab' has no imap endpoint" in result.err


def test_user_set_changes_and_then_clears_the_sent_settings(setup: RelaySetup) -> None:
    setup.add_user("alice", "agency", "alice@gmail.com", "pw")
    changed = setup.cli("user", "set", "alice", "--sent-copy", "never", "--sent-folder", "Sent")
    assert changed.status == 0, changed.err
    assert "sent copy never, sent folder Sent" in changed.out
    cleared = setup.cli("user", "set", "alice", "--sent-copy", "provider", "--no-sent-folder")
    assert cleared.status == 0, cleared.err
    store = Store.open(setup.state_dir / "relay.db")
    alice = store.get_user("alice")
    store.close()
    assert (alice.sent_copy, alice.sent_folder) == (None, None)


def test_user_set_without_a_change_says_what_to_give(setup: RelaySetup) -> None:
    setup.add_user("alice", "agency", "alice@gmail.com", "pw")
    result = setup.cli("user", "set", "alice")
    assert result.status == 1
    assert "give --provider, --upstream-user, --sent-copy, --sent-folder or --no-sent-folder" in (
        result.err
    )


def test_user_add_warns_but_adds_when_the_domains_mail_goes_elsewhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    setup = write_config(tmp_path, {"work": {"preset": "google-workspace"}})
    looked_up: list[str] = []

    def fake_mx(domain: str) -> list[str]:
        looked_up.append(domain)
        return ["example-org.mail.protection.outlook.com."]

    monkeypatch.setattr(cli_users, "lookup_mx", fake_mx)
    password = tmp_path / "pw"
    password.write_text("app password\n")
    args = ["--config", str(setup.config_path), "user", "add", "alice", "--provider", "work"]
    args += ["--email", "alice@example.org", "--password-file", str(password)]
    umask = os.umask(0o077)  # main() sets it for the process: give the rest of the run its own
    try:
        assert main(args) == 0
    finally:
        os.umask(umask)
    err = capsys.readouterr().err
    assert looked_up == ["example.org"]
    assert "warning: mail for example.org is received by example-org.mail.protection" in err
    assert "google-workspace" in err


def test_mx_lookup_without_an_answer_gives_no_warning() -> None:
    assert cli_users.lookup_mx("no-such-domain.invalid") is None
