"""What relay knows about well-known mail providers: endpoints, Sent behaviour, limits."""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType


class TlsMode(enum.Enum):
    """How a connection to a mail server is encrypted."""

    IMPLICIT = "implicit"
    STARTTLS = "starttls"


class Transport(enum.Enum):
    """How relay hands a mail to the provider."""

    SMTP = "smtp"  # SMTP submission, logged in as the user (password, XOAUTH2)
    # Microsoft Graph sendMail with the MIME message (for tenants with SMTP AUTH off); the
    # provider files the Sent copy itself (saveToSentItems).
    GRAPH = "graph"


class SentCopyMailbox(enum.Enum):
    """Whose Sent folder gets the copy of a mail sent as a shared address (Send As)."""

    UPSTREAM_USER = "upstream_user"  # the mailbox relay logs in as, as Exchange and Gmail do
    SENDER = "sender"  # the mailbox of the From address, when it is one of the user's aliases


class SentCopy(enum.Enum):
    """Whether relay APPENDs a copy of each sent mail to the user's Sent folder."""

    AUTO = "auto"
    ALWAYS = "always"
    NEVER = "never"


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A server to connect to, and how to encrypt the connection."""

    host: str
    port: int
    tls: TlsMode


@dataclass(frozen=True, slots=True)
class OAuthEndpoints:
    """Where a provider's OAuth2 authorization server lives and what relay asks it for."""

    authorize_url: str  # may hold {tenant}
    token_url: str
    device_url: str | None  # None: the provider has no device flow for mail scopes
    scopes: tuple[str, ...]
    # Extra query parameters of the authorization request, such as Google's access_type.
    authorize_params: tuple[tuple[str, str], ...] = ()
    default_tenant: str | None = None  # set for endpoints with {tenant} in them
    # The host of the loopback redirect URI: Microsoft ignores the port only for "localhost";
    # Google takes any port on 127.0.0.1 for its desktop clients (RFC 8252 §7.3).
    redirect_host: str = "127.0.0.1"
    client_secret_required: bool = False
    # What an organisation credential asks for: Microsoft's client credentials grant takes
    # only RESOURCE/.default; a Google service account names the scopes it was delegated.
    app_scopes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Pace:
    """The sending rates a provider allows one mailbox; None: no limit known."""

    per_minute: int | None = None
    per_day: int | None = None  # messages in any 24 hours
    recipients_per_day: int | None = None

    def describe(self) -> str:
        """The rates in a few words, as `relay status` and queued replies show them."""
        parts = [
            f"{value}{unit}"
            for value, unit in (
                (self.per_minute, "/min"),
                (self.per_day, "/day"),
                (self.recipients_per_day, " recipients/day"),
            )
            if value is not None
        ]
        return ", ".join(parts) or "none"


NO_PACE = Pace()


@dataclass(frozen=True, slots=True)
class Preset:
    """The facts relay needs about one provider, with the sources that back them."""

    name: str
    smtp: Endpoint
    imap: Endpoint | None
    files_sent_itself: bool
    domains: tuple[str, ...]
    max_recipients: int | None
    sources: tuple[str, ...]
    oauth2: OAuthEndpoints | None = None
    # What the provider documents (PROVIDERS.md §3): relay sends no faster, so it never has to
    # throttle. Only documented figures: an unknown limit is left to the provider's replies.
    pace: Pace = NO_PACE
    # The largest message the provider takes, as documented or as its EHLO's SIZE says; what
    # relay's listener announces until it has seen that EHLO itself. None: not known.
    max_message_bytes: int | None = None


# RFC 8314 §3.3 (465, 993: implicit TLS), RFC 6409 §3.1 (587), RFC 3501 §2.1 (143 + STARTTLS).
STANDARD_PORTS: Mapping[tuple[str, TlsMode], int] = MappingProxyType(
    {
        ("smtp", TlsMode.IMPLICIT): 465,
        ("smtp", TlsMode.STARTTLS): 587,
        ("imap", TlsMode.IMPLICIT): 993,
        ("imap", TlsMode.STARTTLS): 143,
    }
)

_GOOGLE_SMTP = Endpoint("smtp.gmail.com", 465, TlsMode.IMPLICIT)
_GOOGLE_IMAP = Endpoint("imap.gmail.com", 993, TlsMode.IMPLICIT)
_MICROSOFT_IMAP = Endpoint("outlook.office365.com", 993, TlsMode.IMPLICIT)
# Google's XOAUTH2 doc [2] names the one scope for SMTP and IMAP. Google returns a refresh token
# only for access_type=offline, and again on a later sign-in only with prompt=consent.
_GOOGLE_OAUTH = OAuthEndpoints(
    authorize_url="https://accounts.google.com/o/oauth2/v2/auth",
    token_url="https://oauth2.googleapis.com/token",  # noqa: S106  (an address)
    # Google's device flow does not allow the mail scope.
    device_url=None,
    scopes=("https://mail.google.com/",),
    authorize_params=(("access_type", "offline"), ("prompt", "consent")),
    # Google's token endpoint wants the desktop client's secret (not a secret in practice).
    client_secret_required=True,
    # A service account with domain-wide delegation, for SMTP and IMAP alike [2].
    app_scopes=("https://mail.google.com/",),
)
# Microsoft identity platform v2 endpoints with the Exchange Online scopes for SMTP AUTH and
# IMAP [28]; offline_access is what yields a refresh token.
_MICROSOFT_LOGIN = "https://login.microsoftonline.com/{tenant}/oauth2/v2.0"
_MICROSOFT_OAUTH = OAuthEndpoints(
    authorize_url=f"{_MICROSOFT_LOGIN}/authorize",
    token_url=f"{_MICROSOFT_LOGIN}/token",
    device_url=f"{_MICROSOFT_LOGIN}/devicecode",
    scopes=(
        "https://outlook.office.com/SMTP.Send",
        "https://outlook.office.com/IMAP.AccessAsUser.All",
        "offline_access",
    ),
    default_tenant="common",
    redirect_host="localhost",
    # Client credentials for SMTP.SendAsApp and IMAP.AccessAsApp: the Exchange Online resource
    # with /.default (Microsoft, "Authenticate an IMAP, POP or SMTP connection using OAuth").
    app_scopes=("https://outlook.office365.com/.default",),
)
# Graph sendMail as the app (application permission Mail.Send): the Graph resource's .default.
GRAPH_SCOPE = "https://graph.microsoft.com/.default"
GRAPH_URL = "https://graph.microsoft.com/v1.0"

_ALL = (
    Preset(
        name="gmail",
        smtp=_GOOGLE_SMTP,
        imap=_GOOGLE_IMAP,
        # Google: "don't save sent messages... automatically copied" (help 78892, quoted in [3]).
        files_sent_itself=True,
        domains=("gmail.com", "googlemail.com"),
        # 100 recipients per message via SMTP (secondary sources only).
        max_recipients=100,
        oauth2=_GOOGLE_OAUTH,
        # About 500 a day for a consumer account (secondary sources, PROVIDERS.md [5b]).
        pace=Pace(per_day=500),
        # smtp.gmail.com's EHLO announces SIZE 35882577.
        max_message_bytes=35882577,
        sources=(
            "https://mailconfiguration.com/gmail/gmail-imap-pop-smtp-settings/",
            "https://github.com/mustang-im/mustang/issues/627",
            "https://www.wirya.id/2007/09/13/are-there-limits-for-sending-mail.html",
            "https://developers.google.com/gmail/xoauth2_protocol",
        ),
    ),
    Preset(
        name="google-workspace",
        smtp=_GOOGLE_SMTP,
        imap=_GOOGLE_IMAP,
        # Same Google statement as for gmail [3]; Workspace uses the same servers.
        files_sent_itself=True,
        domains=(),
        max_recipients=100,
        oauth2=_GOOGLE_OAUTH,
        # 2,000 messages and 10,000 recipients in a rolling 24 hours (support 166852, [5]).
        pace=Pace(per_day=2000, recipients_per_day=10000),
        max_message_bytes=35882577,  # the same servers as gmail
        sources=(
            "https://mailconfiguration.com/gmail/gmail-imap-pop-smtp-settings/",
            "https://github.com/mustang-im/mustang/issues/627",
            "https://support.google.com/a/answer/166852",
            "https://developers.google.com/gmail/xoauth2_protocol",
        ),
    ),
    Preset(
        name="office365",
        # Exchange Online does not support 465 for client submission [16].
        smtp=Endpoint("smtp.office365.com", 587, TlsMode.STARTTLS),
        imap=_MICROSOFT_IMAP,
        # Microsoft's own comparison lists "Saves to Sent Items" for SMTP AUTH [17].
        files_sent_itself=True,
        domains=(),
        max_recipients=500,
        oauth2=_MICROSOFT_OAUTH,
        # Exchange Online: 30 messages a minute, 10,000 recipients a day per mailbox [25].
        pace=Pace(per_minute=30, recipients_per_day=10000),
        sources=(
            "https://snanc.org/article/how-to-set-up-a-multifunction-device-or-application-to-send-emails-using-microsoft-365-or-office-365",
            "https://github.com/MicrosoftDocs/OfficeDocs-Exchange/issues/1701",
            "https://learn.microsoft.com/en-us/answers/questions/2258712/",
            "https://gist.github.com/gscales/57216f70aef4b79ff2c0a0053152d5d0",
        ),
    ),
    Preset(
        name="outlook",
        smtp=Endpoint("smtp-mail.outlook.com", 587, TlsMode.STARTTLS),
        imap=_MICROSOFT_IMAP,
        # Client reports that Outlook.com files SMTP submissions in Sent [23].
        files_sent_itself=True,
        # Outlook.com serves hotmail/live/msn/outlook under many country domains; no list is
        # documented, so relay does not guess one.
        domains=(),
        # 500/msg is documented only for Microsoft 365 subscribers; free accounts get less [22b].
        max_recipients=None,
        oauth2=_MICROSOFT_OAUTH,
        sources=(
            "https://techissuestoday.com/how-to-update-outlook-email-settings-to-avoid-losing-access-after-september-16/",
            "https://github.com/thunderbird/thunderbird-android/issues/7134",
            "https://support.microsoft.com/en-us/office/sending-limits-in-outlook-com-279ee200-594c-40f0-9ec8-bb6af7735c2e",
            "https://gist.github.com/gscales/57216f70aef4b79ff2c0a0053152d5d0",
        ),
    ),
    Preset(
        name="yahoo",
        smtp=Endpoint("smtp.mail.yahoo.com", 465, TlsMode.IMPLICIT),
        imap=Endpoint("imap.mail.yahoo.com", 993, TlsMode.IMPLICIT),
        # A 2014 report says Yahoo does not file SMTP submissions [36]; unconfirmed today, so
        # relay appends (a missing Sent copy is worse than checking for a duplicate).
        files_sent_itself=False,
        domains=(),
        # 100/msg is documented only for Yahoo Small Business [36b].
        max_recipients=None,
        sources=(
            "https://github.com/chatmail/provider-db/blob/master/_providers/yahoo.md",
            "https://github.com/PHPMailer/PHPMailer/issues/2034",
            "https://github.com/MailCore/mailcore2/issues/724",
        ),
    ),
    Preset(
        name="icloud",
        # Implicit TLS on 587 fails; iCloud offers STARTTLS only [38][40].
        smtp=Endpoint("smtp.mail.me.com", 587, TlsMode.STARTTLS),
        imap=Endpoint("imap.mail.me.com", 993, TlsMode.IMPLICIT),
        # Reports conflict on whether iCloud files its own copy [42], so relay appends.
        files_sent_itself=False,
        # iCloud+ allows custom domains, so icloud.com/me.com/mac.com are not the only ones.
        domains=(),
        # Current Apple doc says 500/msg; an older one said 100 [39].
        max_recipients=500,
        # 1,000 messages and 1,000 recipients a day [39].
        pace=Pace(per_day=1000, recipients_per_day=1000),
        sources=(
            "https://github.com/chatmail/provider-db/blob/master/_providers/icloud.md",
            "https://github.com/dawidd6/action-send-mail/issues/84",
            "https://support.apple.com/en-ca/102198",
            "https://github.com/kellylford/QuickMail/issues/150",
        ),
    ),
    Preset(
        name="zoho",
        smtp=Endpoint("smtp.zoho.com", 465, TlsMode.IMPLICIT),
        # imap.zoho.com for personal accounts is unconfirmed; Sent needs no IMAP under 'auto'.
        imap=None,
        # Zoho files SMTP submissions unless "Do not save a copy in Sent folder" is set [45].
        files_sent_itself=True,
        domains=(),
        max_recipients=None,
        sources=(
            "https://www.zoho.com/mail/help/zoho-smtp.html",
            "https://fgrade.com/post/zoho-mail-smtp-server-configuration",
            "https://github.com/nylas/sync-engine/issues/365",
        ),
    ),
    Preset(
        name="zoho-pro",
        smtp=Endpoint("smtppro.zoho.com", 465, TlsMode.IMPLICIT),
        imap=Endpoint("imappro.zoho.com", 993, TlsMode.IMPLICIT),
        # Same per-account Sent setting as personal Zoho accounts [45].
        files_sent_itself=True,
        domains=(),
        max_recipients=None,
        sources=(
            "https://www.zoho.com/mail/help/zoho-smtp.html",
            "https://wiki.brostweb.com/books/external-accounts/chapter/zoho/export/html",
            "https://fgrade.com/post/zoho-mail-smtp-server-configuration",
        ),
    ),
    Preset(
        name="fastmail",
        smtp=Endpoint("smtp.fastmail.com", 465, TlsMode.IMPLICIT),
        imap=Endpoint("imap.fastmail.com", 993, TlsMode.IMPLICIT),
        # No source says whether Fastmail files SMTP submissions, so relay appends.
        files_sent_itself=False,
        domains=(),
        max_recipients=None,
        sources=(
            "https://www.fastmail.com/help/technical/servernamesandports.html",
            "https://github.com/chatmail/provider-db/blob/master/_providers/fastmail.md",
        ),
    ),
    Preset(
        name="aol",
        smtp=Endpoint("smtp.aol.com", 465, TlsMode.IMPLICIT),
        imap=Endpoint("imap.aol.com", 993, TlsMode.IMPLICIT),
        # Unconfirmed; AOL runs on Yahoo's backend, which did not file copies [36], so append.
        files_sent_itself=False,
        domains=(),
        max_recipients=None,
        sources=("https://github.com/chatmail/provider-db/blob/master/_providers/aol.md",),
    ),
    Preset(
        name="gmx",
        smtp=Endpoint("mail.gmx.net", 465, TlsMode.IMPLICIT),
        imap=Endpoint("imap.gmx.net", 993, TlsMode.IMPLICIT),
        # No source says whether GMX files SMTP submissions, so relay appends.
        files_sent_itself=False,
        domains=(),
        max_recipients=None,
        sources=("https://github.com/chatmail/provider-db/blob/master/_providers/gmx.net.md",),
    ),
)

PRESETS: Mapping[str, Preset] = MappingProxyType({preset.name: preset for preset in _ALL})


def address_domain(email: str) -> str:
    """The lower-cased domain after the last '@' of an address; empty if there is none."""
    _, at, domain = email.rpartition("@")
    return domain.rstrip(".").lower() if at else ""


def email_fits(email: str, domains: tuple[str, ...]) -> str | None:
    """None if a provider fixed to these domains (none = any) serves the address, else why not."""
    if not domains or address_domain(email) in domains:
        return None
    expected = " or ".join(f"@{domain}" for domain in domains)
    return f"{email} is not an address this provider serves (expected {expected})"


# Gmail ignores dots in a consumer local part (PROVIDERS.md §3 [9]) and delivers name+tag to name
# (Google help "Create task-specific email addresses", support.google.com/mail/answer/12096);
# googlemail.com is the same mailbox as gmail.com. Workspace domains keep their dots [9].
_GMAIL_DOMAINS = ("gmail.com", "googlemail.com")


def mailbox_key(address: str, preset: str | None) -> str:
    """The address as the provider tells mailboxes apart: lower case; Gmail's without dots, +tag."""
    address = address.lower()
    local, at, domain = address.rpartition("@")
    if preset != "gmail" or not at or domain.rstrip(".") not in _GMAIL_DOMAINS:
        return address
    return local.split("+", 1)[0].replace(".", "") + "@gmail.com"


# Where each preset's providers receive mail: a domain whose MX hosts end in none of these is
# probably served by someone else. Presets whose receiving hosts no source names are missing.
MX_SUFFIXES: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        # Google: smtp.google.com, or aspmx.l.google.com and its alternates (Google Workspace
        # help 174125, quoted at https://intodns.ai/citations/google-workspace-mx-records);
        # gmail.com itself uses gmail-smtp-in.l.google.com.
        "gmail": ("google.com", "googlemail.com"),
        "google-workspace": ("google.com", "googlemail.com"),
        # Microsoft 365: DOMAIN.mail.protection.outlook.com (Microsoft's "Add DNS records to
        # connect your domain", quoted at https://mxrecordchecker.com/resources/microsoft-365-mx-records);
        # Outlook.com: *.olc.protection.outlook.com.
        "office365": ("outlook.com",),
        "outlook": ("outlook.com",),
        # Zoho: mx.zoho.com and regional mx.zoho.eu, .in, .com.au, .jp
        # (https://www.zoho.com/mail/help/adminconsole/configure-email-delivery.html).
        "zoho": ("zoho.com", "zoho.eu", "zoho.in", "zoho.com.au", "zoho.jp"),
        "zoho-pro": ("zoho.com", "zoho.eu", "zoho.in", "zoho.com.au", "zoho.jp"),
    }
)


def mx_mismatch(preset: str | None, domain: str, mx_hosts: Sequence[str] | None) -> str | None:
    """A warning when the domain's mail goes to hosts other than the preset's; None otherwise."""
    suffixes = MX_SUFFIXES.get(preset or "")
    if not suffixes or not mx_hosts:
        return None  # nothing to compare with, or DNS could not tell
    hosts = [host.lower().rstrip(".") for host in mx_hosts]
    if any(host == s or host.endswith("." + s) for host in hosts for s in suffixes):
        return None
    return (
        f"mail for {domain} is received by {', '.join(hosts)}, not by {preset}'s servers: "
        "check that this is the right provider for the address"
    )
