"""Config templates for the private Dovecot and Postfix test peers."""

DOVECOT_COMMON = """\
base_dir = {run}
state_dir = {state}
log_path = {log}
listen = {host}
first_valid_uid = {uid}
last_valid_uid = {uid}
auth_failure_delay = 0
auth_mechanisms = plain login xoauth2 oauthbearer
# Off (also the default), so a revoked or expired token is refused at the next login.
auth_cache_size = 0
# Passwords are checked only against passwd-file, and tokens only by introspection.
passdb {{
  driver = passwd-file
  mechanisms = plain login
  args = scheme=PLAIN {users}
}}
passdb {{
  driver = oauth2
  mechanisms = xoauth2 oauthbearer
  args = {oauth2}
}}
# An organisation's app token (client credentials) names its tenant, not a mailbox: tried
# after the strict passdb refused it, for any mailbox of the app's domain.
passdb {{
  driver = oauth2
  mechanisms = xoauth2 oauthbearer
  args = {oauth2_app}
}}
userdb {{
  driver = passwd-file
  args = {users}
}}
mail_location = maildir:~/Maildir
namespace inbox {{
  inbox = yes
  mailbox Sent {{
    special_use = \\Sent
    auto = subscribe
  }}
  mailbox Drafts {{
    special_use = \\Drafts
    auto = subscribe
  }}
  mailbox Trash {{
    special_use = \\Trash
    auto = subscribe
  }}
}}
# Enabled instead of "inbox" by carol's userdb fields: the same Maildir, no special-use flags.
namespace plain {{
  inbox = yes
  disabled = yes
  mailbox "Itens Enviados" {{
    auto = subscribe
  }}
}}
# Without this, anvil delays every login after a failed one by 2-15 s.
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
"""

# The oauth2 passdb's args file: RFC 7662 introspection against tests/peers/oauthserver.py.
# In post mode Dovecot 2.3 sends token=, client_id= and client_secret= as a form.
# 2.3.19 checks active before the username, so {"active": false} is a refused token (535),
# not an internal failure. The timeout bounds a login when the server hangs (0 = no limit).
DOVECOT_OAUTH2 = """\
introspection_mode = post
introspection_url = {url}
client_id = {client_id}
client_secret = {client_secret}
username_attribute = username
active_attribute = active
active_value = true
scope = {scope}
timeout_msecs = 5000
"""

# The app tokens' passdb: introspected at their own endpoint, and compared by domain only (the
# username_format applies to both the login and the introspected app@DOMAIN). The roles stand
# in for the scope: Microsoft's app tokens carry roles, not scp.
DOVECOT_OAUTH2_APP = """\
introspection_mode = post
introspection_url = {url}
client_id = {client_id}
client_secret = {client_secret}
username_attribute = username
username_format = %d
active_attribute = active
active_value = true
scope = SMTP.SendAsApp IMAP.AccessAsApp
timeout_msecs = 5000
"""

DOVECOT_DELIVERY = """\
protocols = lmtp
ssl = no
disable_plaintext_auth = no
# erin+Sent@... is saved into erin's "Sent" (SELF_FILING_USERS in mailpeers.py).
recipient_delimiter = +
lmtp_save_to_detail_mailbox = yes
service lmtp {
  unix_listener lmtp-postfix {
    user = postfix
    group = postfix
    mode = 0600
  }
}
service auth {
  unix_listener auth-postfix {
    user = postfix
    group = postfix
    mode = 0600
  }
}
"""

DOVECOT_IMAP = """\
protocols = imap
ssl = yes
ssl_cert = <{cert}
ssl_key = <{key}
# relay's tests may hold more IMAP sessions per user at once than the default 10.
protocol imap {{
  mail_max_userip_connections = 100
}}
service imap-login {{
  inet_listener imap {{
    port = {imap_port}
  }}
  inet_listener imaps {{
    port = {imaps_port}
    ssl = yes
  }}
}}
"""

POSTFIX_MAIN = """\
compatibility_level = 3.6
queue_directory = {queue}
data_directory = {data}
mail_owner = postfix
myhostname = mail.example.org
mydomain = example.org
myorigin = $mydomain
mydestination =
inet_interfaces = {host}
inet_protocols = ipv4
mynetworks = {host}/32
smtp_dns_support_level = disabled
smtpd_peername_lookup = no
alias_maps =
alias_database =
biff = no
maillog_file = {log}
maillog_file_prefixes = {log_dir}
virtual_mailbox_domains = example.org example.net
virtual_mailbox_maps = inline:{{ {mailboxes} }}
virtual_transport = lmtp:unix:{lmtp}
recipient_delimiter = +
sender_bcc_maps = inline:{{ {sent_bcc} }}
smtputf8_enable = yes
# Internationalised mailboxes go by virtual(8) into a Dovecot Maildir: Dovecot 2.3's LMTP offers
# no SMTPUTF8, and Postfix does not downgrade a mail that needs it.
transport_maps = inline:{{ {utf8_transports} }}
virtual_mailbox_base = {mail_base}
virtual_uid_maps = static:{uid}
virtual_minimum_uid = {uid}
virtual_gid_maps = static:{gid}
message_size_limit = 41943040
smtpd_tls_chain_files = {key}, {cert}
smtpd_tls_security_level = may
smtpd_sasl_type = dovecot
smtpd_sasl_path = {auth}
smtpd_sasl_auth_enable = no
smtpd_relay_restrictions = permit_sasl_authenticated, reject
smtpd_recipient_restrictions = permit_sasl_authenticated, reject
"""

POSTFIX_SERVICES = (
    "rewrite unix - - n - - trivial-rewrite",
    "cleanup unix n - n - 0 cleanup",
    "qmgr unix n - n 300 1 qmgr",
    "tlsmgr unix - - n 1000? 1 tlsmgr",
    "bounce unix - - n - 0 bounce",
    "defer unix - - n - 0 bounce",
    "trace unix - - n - 0 bounce",
    "verify unix - - n - 1 verify",
    "flush unix n - n 1000? 0 flush",
    "proxymap unix - - n - - proxymap",
    "proxywrite unix - - n - 1 proxymap",
    "smtp unix - - n - - smtp",
    "relay unix - - n - - smtp",
    "showq unix n - n - - showq",
    "error unix - - n - - error",
    "retry unix - - n - - error",
    "discard unix - - n - - discard",
    "lmtp unix - - n - - lmtp",
    "virtual unix - n n - - virtual",
    "anvil unix - - n - 1 anvil",
    "scache unix - - n - 1 scache",
    "postlog unix-dgram n - n - 1 postlogd",
)
