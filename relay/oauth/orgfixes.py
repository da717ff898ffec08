"""What the admin must do when an organisation credential gets no token (docs/oauth2.md)."""

from __future__ import annotations

from relay.config.model import OAuthSettings
from relay.errors import OAuthError

# Microsoft Entra's error codes, in the error_description of the token endpoint's answer
# (learn.microsoft.com/entra/identity-platform/reference-error-codes).
_ENTRA = (
    ("AADSTS7000222", "the app's client secret has expired"),
    # Certificate credentials: the assertion's certificate is not (or no longer) the app's, or
    # has expired; or the assertion's times are off (the server's clock).
    ("AADSTS700027", "the app registration does not take this certificate (deleted or expired)"),
    ("AADSTS700024", "the client assertion is outside its valid time: check the server's clock"),
    ("AADSTS7000215", "the app's client secret is wrong or was deleted"),
    ("AADSTS700016", "the app is not registered (or not consented) in this tenant"),
    ("AADSTS90002", "the tenant does not exist: check oauth2.tenant"),
    ("AADSTS7000112", "the app registration is disabled"),
    ("AADSTS1002012", "the scope must be RESOURCE/.default for an app's own token"),
    ("AADSTS70011", "the scope must be RESOURCE/.default for an app's own token"),
)


def organisation_fix(
    provider: str, settings: OAuthSettings, mailbox: str, error: OAuthError
) -> str:
    """One line: what is wrong with the credential and which admin step puts it right."""
    if settings.service_account_file is not None:
        return _google_fix(provider, settings, mailbox, error)
    return _microsoft_fix(provider, settings, error)


def _microsoft_fix(provider: str, settings: OAuthSettings, error: OAuthError) -> str:
    where = f"providers.{provider}.oauth2"
    secret_file = settings.client_secret_file or f"{where}.client_secret_file"
    what = next((why for code, why in _ENTRA if code in error.description), None)
    if error.error == "client_secret_file":
        return f"relay cannot read the client secret: {error.description}"
    if error.error in ("client_certificate_file", "client_key_file"):
        return f"{where}.{error.error}: {error.description}; queued mail waits for it"
    certificate = settings.client_certificate_file
    if what is None and error.error == "invalid_client":
        what = (
            "the app's certificate was refused (deleted or expired)"
            if certificate is not None
            else "the app's client secret was refused (revoked, expired or mistyped)"
        )
    if what is None and error.error == "unauthorized_client":
        what = "the app is not allowed this grant in the tenant"
    if what is None:
        return (
            f"the token endpoint said {error.error}; run 'relay check' for a user of "
            f"{provider} and compare with docs/oauth2.md, organisation-wide sign-in"
        )
    if "certificate" in what:
        step = (
            f"upload a new certificate in Entra admin center > App registrations > "
            f"{settings.client_id} > Certificates & secrets > Certificates and write it and its "
            f"key to {certificate} and {settings.client_key_file}"
        )
    elif "secret" in what and certificate is None:
        step = (
            f"create a new secret in Entra admin center > App registrations > "
            f"{settings.client_id} > Certificates & secrets and write it to {secret_file}"
        )
    elif "not registered" in what:
        step = (
            "grant admin consent to the app's SMTP.SendAsApp / IMAP.AccessAsApp (or Mail.Send) "
            "application permissions in the tenant, then New-ServicePrincipal in Exchange "
            "Online PowerShell (docs/oauth2.md)"
        )
    else:
        step = f"check {where} against docs/oauth2.md"
    return f"{what}: {step}; queued mail waits and goes out once it works"


def _google_fix(provider: str, settings: OAuthSettings, mailbox: str, error: OAuthError) -> str:
    key_file = settings.service_account_file
    scopes = ",".join(settings.scopes)
    if error.error == "service_account_file":
        return f"relay cannot use {key_file}: {error.description}"
    if error.error in ("unauthorized_client", "access_denied"):
        return (
            f"the Workspace admin has not authorized client id {settings.client_id} for "
            f"{scopes}: Admin console > Security > Access and data control > API controls > "
            "Manage Domain Wide Delegation > Add new; queued mail waits for it"
        )
    if error.error == "invalid_grant" and "signature" in error.description.lower():
        return (
            f"the key in {key_file} was deleted or disabled: create a new JSON key for the "
            "service account (IAM & Admin > Service accounts > Keys) and replace the file"
        )
    if error.error == "invalid_grant":
        return (
            f"Google refused to issue a token for {mailbox}: check that it is a user of the "
            f"Workspace domain and that the server's clock is right ({error.description})"
        )
    return (
        f"the token endpoint said {error.error}; compare {key_file} and the domain-wide "
        f"delegation of providers.{provider} with docs/oauth2.md"
    )
