"""Provider replies and connection errors, each mapped to a one-line fix with its source.

The table is data: `relay check` shows a hint next to the server's words, and delivery appends
it to the reply the app hears and to the log line. Sources are PROVIDERS.md §4 (its reference
numbers in brackets) or the RFC that defines the reply; `example` is the reply as the server
sends it, which the tests replay at `step`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from relay.providers import PRESETS

GOOGLE = ("gmail", "google-workspace")
MICROSOFT = ("office365", "outlook")
_REPLY_CODE = re.compile(r"(?:^|[\s:;(])([2-5]\d\d)(?=[\s-]|$)")


@dataclass(frozen=True, slots=True)
class Hint:
    """What to do about a failure, and where that advice comes from."""

    text: str
    source: str


@dataclass(frozen=True, slots=True)
class HintRule:
    """One known reply or error: how to recognise it, and its hint."""

    key: str
    hint: Hint
    # The reply or error as it reaches relay; the tests replay it at `step`.
    example: str
    # Where it is seen: dns, tcp, tls, greeting, auth, mail, rcpt, data, imap-login, append.
    step: str
    # Presets whose servers send it; () for any server.
    providers: tuple[str, ...] = ()
    code: int | None = None
    enhanced: str | None = None
    pattern: str | None = None
    # The words are also what other servers send for other reasons, so the rule applies only
    # when the user's provider is known to be one of `providers`.
    provider_only: bool = False

    def matches(self, text: str) -> bool:
        """True when text carries this rule's reply code, enhanced code and words."""
        if self.code is not None and str(self.code) not in _REPLY_CODE.findall(text):
            return False
        if self.enhanced is not None and not re.search(
            rf"(?<![\d.]){re.escape(self.enhanced)}(?![\d.]*\d)", text
        ):
            return False
        return self.pattern is None or re.search(self.pattern, text, re.IGNORECASE) is not None

    def applies_to(self, preset: str | None) -> bool:
        """Whether the rule may be used for a user of this preset (None: explicit provider)."""
        if not self.providers:
            return True
        if preset is None:
            return not self.provider_only
        return preset in self.providers


def _rule(
    key: str,
    text: str,
    source: str,
    example: str,
    step: str,
    *,
    providers: tuple[str, ...] = (),
    code: int | None = None,
    enhanced: str | None = None,
    pattern: str | None = None,
    provider_only: bool = False,
) -> HintRule:
    hint = Hint(text, source)
    return HintRule(key, hint, example, step, providers, code, enhanced, pattern, provider_only)


# Provider rules come first: a generic rule (a bare 535, say) matches their replies too.
RULES: tuple[HintRule, ...] = (
    # --- Google ---
    # PROVIDERS.md §4 [7b]
    _rule(
        "gmail-app-password",
        "Google wants an app password: turn on 2-Step Verification, create one at "
        "https://myaccount.google.com/apppasswords and store it with "
        "'relay user set-password LOGIN'",
        "https://www.oreateai.com/blog/gmails-applicationspecific-password-required-error-why-it-happens-and-how-to-fix-it/882f38f87e0160918c6144a5c107621d",
        "534-5.7.9 Application-specific password required. Learn more at\r\n"
        "534 5.7.9 https://support.google.com/mail/?p=InvalidSecondFactor x1-20020a05 - gsmtp",
        "auth",
        providers=GOOGLE,
        code=534,
        enhanced="5.7.9",
    ),
    # PROVIDERS.md §4 [7a]
    _rule(
        "gmail-bad-credentials",
        "Google refused the password: the account password no longer works for SMTP; use an "
        "app password (2-Step Verification must be on) with 'relay user set-password LOGIN'",
        "https://daimto.com/how-to-fix-username-and-password-when-accessing-googles-smtp-server",
        "535-5.7.8 Username and Password not accepted. For more information, go to\r\n"
        "535 5.7.8  https://support.google.com/mail/?p=BadCredentials x1-20020a05 - gsmtp",
        "auth",
        providers=GOOGLE,
        code=535,
        enhanced="5.7.8",
        pattern=r"BadCredentials|Username and Password not accepted",
    ),
    # PROVIDERS.md §4 [7d]
    _rule(
        "gmail-too-many-logins",
        "Google is limiting logins to this account: wait before trying again, and make sure no "
        "other program keeps logging in with an old password",
        "https://serverdevworker.com/51541f750",
        "454 4.7.0 Too many login attempts, please try again later. x1-20020a05 - gsmtp",
        "auth",
        providers=GOOGLE,
        code=454,
        enhanced="4.7.0",
        pattern=r"Too many login attempts",
    ),
    # PROVIDERS.md §4 [7c]
    _rule(
        "gmail-daily-limit",
        "Google's rolling 24-hour sending quota for this account is used up: send the rest "
        "later (the quota frees up over the next day)",
        "https://www.simplefastwebsites.com/errors/email/smtp-550-5-4-5-daily-sending-quota-exceeded-gmail/",
        "550-5.4.5 Daily user sending limit exceeded. For more information on Gmail\r\n"
        "550 5.4.5 sending limits go to https://support.google.com/a/answer/166852 - gsmtp",
        "mail",
        providers=GOOGLE,
        code=550,
        enhanced="5.4.5",
    ),
    # --- Microsoft (Exchange Online, Outlook.com) ---
    # PROVIDERS.md §4 [24]; §2 [16][18]
    _rule(
        "microsoft-smtp-auth-disabled-tenant",
        "SMTP AUTH is off for the whole Microsoft 365 tenant: an admin turns it on "
        "(Set-TransportConfig -SmtpClientAuthenticationDisabled $false, or Exchange admin "
        "center > Settings > Mail flow), or the account moves to OAuth2",
        "https://docs.bookyourpto.com/features/smtp-troubleshoot",
        "535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the "
        "Tenant. Visit https://aka.ms/smtp_auth_disabled for more information.",
        "auth",
        providers=MICROSOFT,
        code=535,
        enhanced="5.7.139",
        pattern=r"SmtpClientAuthentication is disabled for the Tenant",
    ),
    # PROVIDERS.md §4 [24]; §2 [16]
    _rule(
        "microsoft-security-defaults",
        "Microsoft Entra security defaults block password logins for this account: an admin "
        "turns security defaults off (or adds a Conditional Access exception), or the account "
        "moves to OAuth2",
        "https://docs.bookyourpto.com/features/smtp-troubleshoot",
        "535 5.7.139 Authentication unsuccessful, user is locked by your organization's "
        "security defaults policy. Contact your administrator.",
        "auth",
        providers=MICROSOFT,
        code=535,
        enhanced="5.7.139",
        pattern=r"security defaults",
    ),
    # PROVIDERS.md §4 [24]; §2 [18][19]
    _rule(
        "microsoft-mailbox-smtp-auth",
        "SMTP AUTH is off for this mailbox, or Conditional Access blocks it: an admin enables "
        "'Authenticated SMTP' for the mailbox (Set-CASMailbox -Identity ADDRESS "
        "-SmtpClientAuthenticationDisabled $false)",
        "https://docs.bookyourpto.com/features/smtp-troubleshoot",
        "535 5.7.139 Authentication unsuccessful, the request did not meet the criteria to be "
        "authenticated successfully. Contact your administrator.",
        "auth",
        providers=MICROSOFT,
        code=535,
        enhanced="5.7.139",
        pattern=r"did not meet the criteria",
    ),
    # PROVIDERS.md §4 [24]
    _rule(
        "microsoft-authentication-unsuccessful",
        "Microsoft refused the login: check the password (with MFA on, an app password), or "
        "basic authentication is blocked for the account and it needs OAuth2",
        "https://docs.bookyourpto.com/features/smtp-troubleshoot",
        "535 5.7.3 Authentication unsuccessful [SN4PR0601CA0002.namprd06.prod.outlook.com]",
        "auth",
        providers=MICROSOFT,
        code=535,
        enhanced="5.7.3",
    ),
    # PROVIDERS.md §4 [24]
    _rule(
        "microsoft-client-not-authenticated",
        "Microsoft did not count the session as logged in: use STARTTLS on port 587, then AUTH; "
        "an admin checks SMTP AUTH for the tenant and the mailbox and any security policy",
        "https://docs.bookyourpto.com/features/smtp-troubleshoot",
        "530 5.7.57 Client not authenticated to send mail. [BN9PR03CA0001.prod.outlook.com]",
        "mail",
        providers=MICROSOFT,
        enhanced="5.7.57",
    ),
    # PROVIDERS.md §4 [14]; §2 [12][13]
    _rule(
        "microsoft-basic-auth-retired",
        "Microsoft no longer accepts passwords for SMTP on this tenant: the account has to move "
        "to OAuth2 (XOAUTH2)",
        "https://github.com/OpenCTI-Platform/opencti/issues/12069",
        "550 5.7.30 Basic authentication is not supported for Client Submission.",
        "auth",
        providers=MICROSOFT,
        enhanced="5.7.30",
    ),
    # PROVIDERS.md §4 [15]; §3 [22]
    _rule(
        "microsoft-send-as-denied",
        "The From address is not this mailbox's: send from the user's own address, or an admin "
        "grants the mailbox Send As on that address",
        "http://www.kouhan.cn/en/article/00038744",
        "554 5.2.0 STOREDRV.Submission.Exception:SendAsDeniedException.MapiExceptionSendAsDenied;"
        " Failed to process message due to a permanent exception with message Cannot submit "
        "message.",
        "data",
        providers=MICROSOFT,
        pattern=r"SendAsDenied",
    ),
    # PROVIDERS.md §4 (exact text unconfirmed there); same cause as SendAsDenied [15]
    _rule(
        "microsoft-send-as-permission",
        "The From address is not this mailbox's: send from the user's own address, or an admin "
        "grants the mailbox Send As on that address",
        "http://www.kouhan.cn/en/article/00038744",
        "550 5.7.60 SMTP; Client does not have permissions to send as this sender",
        "data",
        providers=MICROSOFT,
        enhanced="5.7.60",
    ),
    # Not in PROVIDERS.md: Microsoft's NDR page "Fix 'sender's submission quota exceeded' errors
    # in Exchange Online" (NDR 5.2.2), and its SMTP AUTH limits doc quoted in
    # MicrosoftDocs/OfficeDocs-Support#1150 (554 5.2.0 ...SubmissionQuotaExceededException).
    _rule(
        "microsoft-daily-limit",
        "The mailbox reached Exchange Online's sending limit (10,000 recipients a day): send "
        "the rest after the 24-hour window has passed",
        "https://learn.microsoft.com/en-us/exchange/mail-flow-best-practices/"
        "non-delivery-reports-in-exchange-online/fix-error-for-submission-quota-exceeded-in-exchange-online",
        "554 5.2.2 STOREDRV.Submission.Exception:SubmissionQuotaExceededException; Failed to "
        "process message due to a permanent exception with message Submission quota exceeded.",
        "data",
        providers=MICROSOFT,
        pattern=r"SubmissionQuotaExceeded|Submission quota exceeded",
    ),
    # --- Yahoo ---
    # PROVIDERS.md §4 [32][33]
    _rule(
        "yahoo-app-password",
        "Yahoo refused the account password: generate an app password (Yahoo Account Security "
        "> Generate app password) and store it with 'relay user set-password LOGIN'",
        "https://github.com/PHPMailer/PHPMailer/issues/2034",
        "535 5.7.0 (#AUTH005) Too many bad auth attempts.",
        "auth",
        providers=("yahoo",),
        code=535,
        pattern=r"#AUTH005",
    ),
    # PROVIDERS.md §4 [33b]
    _rule(
        "yahoo-from-mismatch",
        "Yahoo refuses this From address for the account: send from the account's own address",
        "https://github.com/mattermost/mattermost/issues/13652",
        "550 Request failed; Mailbox unavailable",
        "mail",
        providers=("yahoo",),
        code=550,
        pattern=r"Request failed; Mailbox unavailable",
        provider_only=True,
    ),
    # --- iCloud ---
    # PROVIDERS.md §4 [41]
    _rule(
        "icloud-app-specific-password",
        "iCloud refused the Apple ID password: create an app-specific password at "
        "https://appleid.apple.com (Sign-In and Security) and store it with "
        "'relay user set-password LOGIN'",
        "https://github.com/kellylford/QuickMail/issues/32",
        "NO [AUTHENTICATIONFAILED] Authentication failed.",
        "imap-login",
        providers=("icloud",),
        pattern=r"AUTHENTICATIONFAILED",
        provider_only=True,
    ),
    # PROVIDERS.md §4 [39]
    _rule(
        "icloud-daily-limit",
        "iCloud's daily sending limit for this account is reached: send the rest tomorrow",
        "https://support.apple.com/en-ca/102198",
        "550 5.7.1 <alice@icloud.com>: You have exceeded your daily sending limit.",
        "mail",
        providers=("icloud",),
        pattern=r"exceeded your daily sending limit",
    ),
    # --- Zoho ---
    # PROVIDERS.md §4 [45b]; §3 [43]
    _rule(
        "zoho-relaying-disallowed",
        "Zoho refuses this From address for the account: send from the account's address, or "
        "add that address as an alias of the account in Zoho Mail",
        "https://help.zoho.com/portal/en/community/topic/553-relaying-disallowed-8-2-2013",
        "553 Relaying disallowed",
        "mail",
        providers=("zoho", "zoho-pro"),
        code=553,
        pattern=r"Relaying disallowed",
    ),
    # --- Any server ---
    # PROVIDERS.md §4 [27b]; RFC 3501 §6.3.11
    _rule(
        "imap-trycreate",
        "The Sent folder relay used does not exist: relay creates it on the next copy; if "
        "'relay user set --sent-folder' or the provider's sent_folder names it, check the name",
        "https://github.com/floatpane/matcha/issues/1641",
        "NO [TRYCREATE] Folder is not found",
        "append",
        pattern=r"\[TRYCREATE\]",
    ),
    # RFC 3207 §4: the reply to a command that needs TLS first.
    _rule(
        "must-starttls-first",
        "The server wants STARTTLS before AUTH: set the provider's smtp tls: starttls "
        "(usually port 587)",
        "https://www.rfc-editor.org/rfc/rfc3207#section-4",
        "530 5.7.0 Must issue a STARTTLS command first",
        "auth",
        code=530,
        pattern=r"STARTTLS",
    ),
    # RFC 8314 §3.3 (implicit TLS, 465) vs RFC 3207 (STARTTLS, 587); PROVIDERS.md §1 [40]
    # (iCloud: implicit TLS on 587 fails). The server greets in plaintext; OpenSSL reads the
    # greeting as a TLS record and gives up on its version.
    _rule(
        "tls-on-starttls-port",
        "This port speaks plaintext first and expects STARTTLS: set the provider's smtp "
        "tls: starttls, or use its implicit-TLS port (usually 465)",
        "https://www.rfc-editor.org/rfc/rfc8314#section-3.3",
        "TLS with smtp.example.org:587 failed: handshake failed: WRONG_VERSION_NUMBER",
        "tls",
        pattern=r"WRONG_VERSION_NUMBER|wrong version number|record layer failure|"
        r"packet length too long|unknown protocol",
    ),
    # RFC 8314 §3.3: on an implicit-TLS port the server waits for the client's TLS hello, so a
    # STARTTLS client waits for a greeting that never comes (or reads TLS bytes as garbage).
    _rule(
        "starttls-on-tls-port",
        "The server sent no SMTP greeting: this port probably expects TLS from the first byte; "
        "set the provider's smtp tls: implicit (usually port 465)",
        "https://www.rfc-editor.org/rfc/rfc8314#section-3.3",
        "smtp.example.org:465 did not answer in time: Timed out waiting for server ready message",
        "greeting",
        pattern=r"waiting for server ready message|Malformed SMTP response|"
        r"Invalid response code|did not greet",
    ),
    # RFC 3207 §4: a server that takes mail for submission announces STARTTLS; relay never
    # sends a password without TLS.
    _rule(
        "no-starttls-offered",
        "The server does not offer STARTTLS on this port: if the port uses TLS from the first "
        "byte set tls: implicit (usually 465); otherwise it is not a submission port",
        "https://www.rfc-editor.org/rfc/rfc3207#section-4",
        "smtp.example.org:25 does not offer STARTTLS; refusing to send in plaintext",
        "ehlo",
        pattern=r"does not offer STARTTLS|STARTTLS extension not supported",
    ),
    # RFC 6409 §3.1 (587), RFC 8314 §3.3 (465); PROVIDERS.md §1 [55] (port 25 blocked).
    _rule(
        "connection-refused",
        "Nothing accepts connections on that port: check the provider's smtp port (465 for "
        "implicit TLS, 587 for STARTTLS) and host, or the server is down",
        "https://www.rfc-editor.org/rfc/rfc8314#section-3.3",
        "smtp.example.org:2465 unreachable: [Errno 111] Connect call failed ('192.0.2.1', 2465)",
        "tcp",
        pattern=r"Connection refused|Connect call failed|Errno 111\b",
    ),
    # RFC 6409 §3.1, RFC 8314 §3.3; PROVIDERS.md §1 [55]: networks drop port 25 silently.
    _rule(
        "connect-timeout",
        "No answer to the connection: a firewall drops it or the port is wrong; submission is "
        "465 (implicit TLS) or 587 (STARTTLS), never 25",
        "https://www.rfc-editor.org/rfc/rfc6409#section-3.1",
        "smtp.example.org:25 did not answer in time: Timed out connecting to "
        "smtp.example.org on port 25",
        "tcp",
        pattern=r"Timed out connecting|connection timed out|no connection within",
    ),
    # RFC 6125 §6: the certificate must name the host relay connected to.
    _rule(
        "certificate-host-mismatch",
        "The certificate is for other names: set the provider's host to a name the certificate "
        "lists ('relay check' shows them)",
        "https://www.rfc-editor.org/rfc/rfc6125#section-6",
        "TLS with 127.0.0.1:465 failed: certificate not accepted: IP address mismatch, "
        "certificate is not valid for '127.0.0.1'.",
        "tls",
        pattern=r"(Hostname|IP address) mismatch",
    ),
    # RFC 5280 §6: the chain must lead to a trusted CA.
    _rule(
        "certificate-untrusted",
        "relay does not trust the CA that signed the certificate: for a private CA set the "
        "provider's ca_file to its PEM file",
        "https://www.rfc-editor.org/rfc/rfc5280#section-6",
        "TLS with mail.example.org:465 failed: certificate not accepted: unable to get local "
        "issuer certificate",
        "tls",
        pattern=r"unable to get local issuer|self[- ]signed certificate|unable to get issuer",
    ),
    # RFC 5280 §4.1.2.5: outside its validity period a certificate is not valid.
    _rule(
        "certificate-expired",
        "The server's certificate has expired (or this machine's clock is wrong): check the "
        "clock, else the provider has to renew it",
        "https://www.rfc-editor.org/rfc/rfc5280#section-4.1.2.5",
        "TLS with mail.example.org:465 failed: certificate not accepted: certificate has expired",
        "tls",
        pattern=r"certificate has expired|certificate is not yet valid",
    ),
    # getaddrinfo(3): the name has no address.
    _rule(
        "host-not-found",
        "The host name does not resolve: check the provider's host in config.yaml ('relay "
        "config check' shows it) and this machine's DNS",
        "https://man7.org/linux/man-pages/man3/getaddrinfo.3.html",
        "[Errno -2] Name or service not known",
        "dns",
        pattern=r"Name or service not known|No address associated|nodename nor servname|"
        r"Temporary failure in name resolution|getaddrinfo failed",
    ),
    # RFC 5530 §3: AUTHENTICATIONFAILED.
    _rule(
        "imap-login-refused",
        "The IMAP server refused the login: relay logs in with the same user and password as "
        "for SMTP; check both, and that IMAP access is on for the account",
        "https://www.rfc-editor.org/rfc/rfc5530#section-3",
        "NO [AUTHENTICATIONFAILED] Authentication failed.",
        "imap-login",
        pattern=r"AUTHENTICATIONFAILED",
    ),
    # RFC 4954 §6: 535 5.7.8 Authentication credentials invalid.
    _rule(
        "login-refused",
        "The server refused the user name or password: check the upstream user ('relay user "
        "show LOGIN') and store the right password with 'relay user set-password LOGIN'; many "
        "providers want an app password",
        "https://www.rfc-editor.org/rfc/rfc4954#section-6",
        "535 5.7.8 Error: authentication failed: (reason unavailable)",
        "auth",
        code=535,
    ),
)


def find_rule(provider_preset: str | None, reply_or_error_text: str) -> HintRule | None:
    """The first rule for this provider (None: an explicit one) that the text matches."""
    for rule in RULES:
        if rule.applies_to(provider_preset) and rule.matches(reply_or_error_text):
            return rule
    return None


def hint_for(provider_preset: str | None, reply_or_error_text: str) -> Hint | None:
    """The hint for a reply or error from a provider of this preset, if one is known."""
    rule = find_rule(provider_preset, reply_or_error_text)
    return None if rule is None else rule.hint


def preset_for_host(host: str) -> str | None:
    """The preset whose SMTP or IMAP server this host is, for code that knows only the host."""
    host = host.lower().rstrip(".")
    for preset in PRESETS.values():
        if host in (preset.smtp.host, preset.imap.host if preset.imap else None):
            return preset.name
    return None
