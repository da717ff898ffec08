"""The hint rules for replies that one provider family sends (Google, Microsoft, Yahoo, ...)."""

from __future__ import annotations

from relay.providers.hintrule import HintRule, rule

GOOGLE = ("gmail", "google-workspace")
MICROSOFT = ("office365", "outlook")

PROVIDER_RULES: tuple[HintRule, ...] = (
    # --- Google ---
    # PROVIDERS.md §4 [7b]
    rule(
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
    rule(
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
    rule(
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
    rule(
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
    rule(
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
    rule(
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
    rule(
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
    rule(
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
    rule(
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
    rule(
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
    rule(
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
    rule(
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
    rule(
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
    rule(
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
    rule(
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
    rule(
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
    rule(
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
    rule(
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
)
