"""The hint rules for replies and errors from any server: RFC-defined replies, TCP, TLS and DNS."""

from __future__ import annotations

from relay.providers.hintrule import HintRule, rule

GENERIC_RULES: tuple[HintRule, ...] = (
    # --- Any server ---
    # PROVIDERS.md §4 [27b]; RFC 3501 §6.3.11
    rule(
        "imap-trycreate",
        "The Sent folder relay used does not exist: relay creates it on the next copy; if "
        "'relay user set --sent-folder' or the provider's sent_folder names it, check the name",
        "https://github.com/floatpane/matcha/issues/1641",
        "NO [TRYCREATE] Folder is not found",
        "append",
        pattern=r"\[TRYCREATE\]",
    ),
    # RFC 3207 §4: the reply to a command that needs TLS first.
    rule(
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
    rule(
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
    rule(
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
    rule(
        "no-starttls-offered",
        "The server does not offer STARTTLS on this port: if the port uses TLS from the first "
        "byte set tls: implicit (usually 465); otherwise it is not a submission port",
        "https://www.rfc-editor.org/rfc/rfc3207#section-4",
        "smtp.example.org:25 does not offer STARTTLS; refusing to send in plaintext",
        "ehlo",
        pattern=r"does not offer STARTTLS|STARTTLS extension not supported",
    ),
    # RFC 6409 §3.1 (587), RFC 8314 §3.3 (465); PROVIDERS.md §1 [55] (port 25 blocked).
    rule(
        "connection-refused",
        "Nothing accepts connections on that port: check the provider's smtp port (465 for "
        "implicit TLS, 587 for STARTTLS) and host, or the server is down",
        "https://www.rfc-editor.org/rfc/rfc8314#section-3.3",
        "smtp.example.org:2465 unreachable: [Errno 111] Connect call failed ('192.0.2.1', 2465)",
        "tcp",
        pattern=r"Connection refused|Connect call failed|Errno 111\b",
    ),
    # RFC 6409 §3.1, RFC 8314 §3.3; PROVIDERS.md §1 [55]: networks drop port 25 silently.
    rule(
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
    rule(
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
    rule(
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
    rule(
        "certificate-expired",
        "The server's certificate has expired (or this machine's clock is wrong): check the "
        "clock, else the provider has to renew it",
        "https://www.rfc-editor.org/rfc/rfc5280#section-4.1.2.5",
        "TLS with mail.example.org:465 failed: certificate not accepted: certificate has expired",
        "tls",
        pattern=r"certificate has expired|certificate is not yet valid",
    ),
    # getaddrinfo(3): the name has no address.
    rule(
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
    rule(
        "imap-login-refused",
        "The IMAP server refused the login: relay logs in with the same user and password as "
        "for SMTP; check both, and that IMAP access is on for the account",
        "https://www.rfc-editor.org/rfc/rfc5530#section-3",
        "NO [AUTHENTICATIONFAILED] Authentication failed.",
        "imap-login",
        pattern=r"AUTHENTICATIONFAILED",
    ),
    # RFC 4954 §6: 535 5.7.8 Authentication credentials invalid.
    rule(
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
