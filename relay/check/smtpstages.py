"""`relay check` up to the SMTP login: DNS, TCP, TLS, EHLO and AUTH, as the pool connects."""

from __future__ import annotations

import asyncio
import socket
import ssl
import time

import aiosmtplib

from relay.check.certificate import Certificate, read_certificate
from relay.check.report import CheckContext, Found, StageFailure
from relay.config.addresses import is_ip
from relay.providers.presets import TlsMode
from relay.upstream.pool import Session, close_session, smtp_client
from relay.upstream.replies import auth_error, one_line, upstream_error
from relay.upstream.sasl import bearer_mechanism, bearer_refused_fix, smtp_login

PORT_FIX = "check the provider's smtp host, port and tls (465: implicit, 587: starttls)"
TLS_FIX = "check the provider's smtp tls and port, and its ca_file if it uses a private CA"
LOGIN_FIX = "check the upstream user, and store the password again: 'relay user set-password'"


class SmtpStages:
    """The stages that reach a logged-in SMTP session, on one connection like the pool's."""

    def __init__(self, context: CheckContext) -> None:
        self.context = context
        self.client: aiosmtplib.SMTP | None = None

    async def dns(self) -> Found:
        """Resolve the SMTP host."""
        smtp = self.context.provider.smtp
        if is_ip(smtp.host):
            return Found(
                f"{smtp.host} is an address: nothing to look up", {"addresses": [smtp.host]}
            )
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(smtp.host, smtp.port, type=socket.SOCK_STREAM)
        except OSError as error:
            reply = f"{smtp.host}: {error.strerror or error}"
            raise StageFailure(f"{smtp.host} does not resolve", reply, fix=PORT_FIX) from None
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        return Found(f"{smtp.host} is {', '.join(addresses)}", {"addresses": addresses})

    async def tcp(self) -> Found:
        """Open a plain TCP connection to the SMTP port, and close it again."""
        context, smtp = self.context, self.context.provider.smtp
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(smtp.host, smtp.port), context.connect_timeout
            )
        except TimeoutError:
            reply = f"{context.where}: no connection within {context.connect_timeout:g} s"
            raise StageFailure("no connection", reply, fix=PORT_FIX) from None
        except OSError as error:
            reply = upstream_error(error, context.where).text
            raise StageFailure("no connection", reply, fix=PORT_FIX) from None
        peer = writer.get_extra_info("peername")
        writer.close()
        address = str(peer[0]) if isinstance(peer, tuple) else smtp.host
        return Found(f"connected to {address} port {smtp.port}", {"address": address})

    async def tls(self) -> Found:
        """Connect as the pool does: greeting and TLS (implicit, or STARTTLS after EHLO)."""
        context, provider = self.context, self.context.provider
        client = smtp_client(
            provider.smtp,
            context.tls.for_ca_file(provider.ca_file),
            local_hostname=context.config.hostname,
            timeout=context.timeout,
        )
        try:
            await client.connect(timeout=context.connect_timeout)
        except (aiosmtplib.SMTPException, OSError) as error:
            failed = upstream_error(error, context.where)
            summary, shown = failed.text, dict[str, object]()
            if _is_verify_error(error):
                cert = await self._unverified_certificate()
                if cert is not None:
                    shown["certificate"] = cert.as_json(time.time())
                    summary += f"; the server shows a {cert.describe(time.time())}"
            raise StageFailure(summary, failed.text, fix=TLS_FIX, facts=shown) from None
        self.client = client
        tls_object = client.get_transport_info("ssl_object")
        cert = read_certificate(tls_object.getpeercert(binary_form=True))
        now = time.time()
        mode = "implicit TLS" if provider.smtp.tls is TlsMode.IMPLICIT else "STARTTLS"
        facts: dict[str, object] = {
            "mode": provider.smtp.tls.value,
            "version": tls_object.version(),
        }
        facts["certificate"] = cert.as_json(now)
        return Found(
            f"{mode}, {tls_object.version()}; {cert.describe(now)}", facts, cert.warnings(now)
        )

    async def ehlo(self) -> Found:
        """EHLO over TLS: the extensions, AUTH mechanisms and SIZE the server announces."""
        client, context = self._client(), self.context
        try:
            await client.ehlo()
        except (aiosmtplib.SMTPException, OSError) as error:
            failed = upstream_error(error, context.where)
            raise StageFailure(failed.text, failed.text, fix=PORT_FIX) from None
        extensions = sorted(f"{k.upper()} {v}".strip() for k, v in client.esmtp_extensions.items())
        mechanisms = [m.upper() for m in client.server_auth_methods]
        size_text = client.esmtp_extensions.get("size", "")
        size = int(size_text) if size_text.isdigit() else None
        facts: dict[str, object] = {"extensions": extensions, "auth": mechanisms, "size": size}
        if not client.supports_extension("auth"):
            raise StageFailure(
                "the server offers no AUTH: it does not take mail for submission here",
                f"EHLO: {', '.join(extensions)}",
                fix=PORT_FIX,
                facts=facts,
            )
        if context.bearer and bearer_mechanism(client.server_auth_methods) is None:
            raise StageFailure(
                f"the server offers AUTH {' '.join(mechanisms)}; an OAuth2 login needs XOAUTH2 "
                "or OAUTHBEARER",
                f"AUTH {' '.join(mechanisms)}",
                fix="this server does not take OAuth2 tokens: give the user a password instead",
                facts=facts,
            )
        if not context.bearer and not client.supported_auth_methods:
            raise StageFailure(
                f"the server offers AUTH {' '.join(mechanisms)}; relay logs in with PLAIN, "
                "LOGIN or CRAM-MD5",
                f"AUTH {' '.join(mechanisms)}",
                fix="this account needs another login: if the provider takes OAuth2, see "
                "'relay user authorize'",
                facts=facts,
            )
        # Without an explicit limit relay follows the SIZE it sees here: nothing to warn of.
        limit = context.config.limits.max_message_bytes
        warnings: tuple[str, ...] = ()
        if size and limit is not None and size < limit:
            warnings = (
                f"the server takes messages up to {size} bytes and relay up to {limit}: set "
                f"limits.max_message_bytes to {size} so apps hear 552 at once",
            )
        summary = f"AUTH {' '.join(mechanisms)}; SIZE {size or 'not announced'}; "
        return Found(summary + f"{len(extensions)} extensions", facts, warnings)

    async def auth(self) -> Found:
        """Log in with the stored password, then QUIT."""
        client, context = self._client(), self.context
        username = context.user.upstream_user
        try:
            mechanism = await smtp_login(client, username, context.secret, bearer=context.bearer)
        except aiosmtplib.SMTPAuthenticationError as error:
            failed = auth_error(error.code, error.message, username, context.where)
            reply = f"{error.code} {one_line(error.message)}"
            if context.bearer:
                fix = bearer_refused_fix(context.user.login)
                raise StageFailure(failed.text, reply, fix=fix, hints=False) from None
            raise StageFailure(failed.text, reply, fix=LOGIN_FIX) from None
        except (aiosmtplib.SMTPException, OSError) as error:
            failed = upstream_error(error, context.where)
            raise StageFailure(failed.text, failed.text, fix=LOGIN_FIX) from None
        await self.close()
        how = f" with {mechanism}" if context.bearer else ""
        return Found(
            f"logged in as {username}{how}", {"username": username, "mechanism": mechanism}
        )

    async def close(self) -> None:
        """QUIT the session if one is open."""
        client, self.client = self.client, None
        if client is not None:
            await close_session(Session(client, self.context.where))

    def _client(self) -> aiosmtplib.SMTP:
        if self.client is None:
            raise RuntimeError("an SMTP stage ran without a connection")  # the tls stage failed
        return self.client

    async def _unverified_certificate(self) -> Certificate | None:
        """The certificate the server shows, read without trusting it, to say whom it is for.

        Only the handshake (and for STARTTLS the EHLO before it) happens on this connection:
        nothing else is ever sent over it.
        """
        context = self.context
        unverified = ssl.create_default_context()
        unverified.check_hostname = False
        unverified.verify_mode = ssl.CERT_NONE
        client = smtp_client(
            context.provider.smtp,
            unverified,
            local_hostname=context.config.hostname,
            timeout=context.timeout,
        )
        try:
            await client.connect(timeout=context.connect_timeout)
            tls_object = client.get_transport_info("ssl_object")
            return read_certificate(tls_object.getpeercert(binary_form=True))
        except (aiosmtplib.SMTPException, OSError, ValueError):
            return None
        finally:
            client.close()


def _is_verify_error(error: BaseException) -> bool:
    current: BaseException | None = error
    while current is not None:
        if isinstance(current, ssl.SSLCertVerificationError):
            return True
        current = current.__cause__ or current.__context__
    return False
