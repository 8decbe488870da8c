"""A private Postfix (SMTP, plain TCP) on a free loopback port that delivers into a test Dovecot.

Recipe (Postfix 3.7, as root, Debian 12 package postfix):
- A fresh ``/tmp/mailgate-postfix-XXXX`` (mode 0755) holds ``etc/`` (``config_directory``: main.cf,
  master.cf, the recipient map), ``queue/`` (``queue_directory``, root-owned) and ``data/``
  (``data_directory``, must be owned by ``postfix``). ``meta_directory`` stays /etc/postfix (read
  only: postfix-files, dynamicmaps.cf). /etc/postfix/main.cf is neither read nor changed.
- ``postfix -c ETC check`` creates the queue subdirectories with the right owners (about 2 s); then
  ``/usr/lib/postfix/sbin/master -c ETC -d`` runs in the foreground under a ``ReapedDaemon`` and is
  stopped with SIGTERM. ``postfix start-fg`` works too but adds a shell in between; ``postfix start``
  daemonises and leaves the tree to PID 1.
- master.cf: ``127.0.0.1:PORT inet n - n - - smtpd`` (and ``[::1]:PORT`` when IPv6 loopback exists),
  every service unchained (chroot ``n``: the queue directory has no chroot tree), and a ``dovecot``
  pipe service: ``flags=DRhu user=nobody argv=dovecot-lda -c DOVECOT_CONF -f ${sender} -d ${user}``.
- main.cf: ``inet_interfaces`` loopback only, ``mynetworks = 127.0.0.0/8 [::1]/128``,
  ``smtpd_authorized_xclient_hosts`` the same, ``mydestination =`` (no local delivery),
  ``virtual_mailbox_domains = test.example`` with ``virtual_transport = dovecot``,
  ``virtual_mailbox_maps = regexp:...`` (the named users plus ``user-<hex>``; anyone else gets
  ``550 5.1.1 ... User unknown in virtual mailbox table``), ``default_transport = error`` (nothing
  leaves), ``disable_dns_lookups = yes``, ``smtp_host_lookup = native``, ``smtpd_peername_lookup = no``
  (no reverse DNS: clients are ``unknown`` unless XCLIENT NAME says otherwise), SASL AUTH through
  Dovecot's auth socket (``smtpd_sasl_type = dovecot``), relaying only for mynetworks or SASL users.

Pitfalls found:
- The ``postfix`` command reports fatal errors only to syslog (or stderr when it is a terminal); with
  no syslog it fails silently with exit code 1. ``maillog_file`` fixes that, but only for a path under
  ``maillog_file_prefixes`` (default ``/var, /dev/stdout``), so both are set, plus a ``postlog`` service.
- ``data_directory`` not owned by ``postfix``: a warning from ``check``, then a fatal error at start.
- ``master`` calls ``setsid()`` and changes credentials, which clears a parent-death signal: hence the
  subreaper wrapper, or a crashed test run leaks Postfix.
- After ``XCLIENT ADDR=`` the session's client is no longer in mynetworks, so relaying is refused
  (``554 5.7.1 Relay access denied``) unless XCLIENT LOGIN= or AUTH made it a SASL user.
- Recipients are matched case-insensitively and folded to lower case for dovecot-lda (flag ``u``).
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from tests.support.dovecot import FRESH_USER_PREFIX, Dovecot
from tests.support.loopback import (
    IPV4_LOOPBACK,
    IPV6_LOOPBACK,
    free_port,
    ipv6_loopback_available,
    read_greeting,
)
from tests.support.mailstore import TEST_DOMAIN, MailUser, StoredMessage
from tests.support.subreaper import ReapedDaemon

POSTFIX_BINARY = Path("/usr/sbin/postfix")
MASTER_BINARY = Path("/usr/lib/postfix/sbin/master")
REQUIRED_BINARIES = (POSTFIX_BINARY, MASTER_BINARY, Path("/usr/lib/postfix/sbin/smtpd"))
HOSTNAME = "mx.test.example"
# An address in the test domain that Postfix rejects at RCPT time.
UNKNOWN_ADDRESS = f"no-such-user@{TEST_DOMAIN}"
MESSAGE_SIZE_LIMIT = 64 * 1024 * 1024
_START_ATTEMPTS = 5
_START_TIMEOUT = 20.0

_SERVICES = """\
pickup     unix  n  -  n  60    1  pickup
cleanup    unix  n  -  n  -     0  cleanup
qmgr       unix  n  -  n  300   1  qmgr
rewrite    unix  -  -  n  -     -  trivial-rewrite
bounce     unix  -  -  n  -     0  bounce
defer      unix  -  -  n  -     0  bounce
trace      unix  -  -  n  -     0  bounce
verify     unix  -  -  n  -     1  verify
flush      unix  n  -  n  1000? 0  flush
proxymap   unix  -  -  n  -     -  proxymap
proxywrite unix  -  -  n  -     1  proxymap
smtp       unix  -  -  n  -     -  smtp
relay      unix  -  -  n  -     -  smtp
showq      unix  n  -  n  -     -  showq
error      unix  -  -  n  -     -  error
retry      unix  -  -  n  -     -  error
discard    unix  -  -  n  -     -  discard
anvil      unix  -  -  n  -     1  anvil
scache     unix  -  -  n  -     1  scache
postlog    unix-dgram n - n -   1  postlogd
"""


def missing_binaries() -> list[Path]:
    """Postfix binaries this module needs that are not installed."""
    return [binary for binary in REQUIRED_BINARIES if not binary.exists()]


def _main_cf(root: Path, dovecot: Dovecot, ipv6: bool) -> str:
    loopback_networks = "127.0.0.0/8 [::1]/128" if ipv6 else "127.0.0.0/8"
    return f"""\
# Written by tests/support/postfix.py for one test session.
compatibility_level = 3.6
config_directory = {root}/etc
queue_directory = {root}/queue
data_directory = {root}/data
meta_directory = /etc/postfix
maillog_file_prefixes = {root}
maillog_file = {root}/maillog
myhostname = {HOSTNAME}
mydomain = {TEST_DOMAIN}
myorigin = {TEST_DOMAIN}
mydestination =
inet_interfaces = {"127.0.0.1, [::1]" if ipv6 else "127.0.0.1"}
inet_protocols = {"ipv4, ipv6" if ipv6 else "ipv4"}
mynetworks = {loopback_networks}
smtpd_authorized_xclient_hosts = {loopback_networks}
smtpd_relay_restrictions = permit_mynetworks, permit_sasl_authenticated, reject_unauth_destination
default_transport = error:outbound mail is disabled in tests
relay_transport = error:outbound mail is disabled in tests
disable_dns_lookups = yes
smtp_host_lookup = native
smtpd_peername_lookup = no
alias_maps =
alias_database =
local_recipient_maps =
virtual_mailbox_domains = {TEST_DOMAIN}
virtual_mailbox_maps = regexp:{root}/etc/recipients
virtual_transport = dovecot
dovecot_destination_recipient_limit = 1
smtpd_sasl_auth_enable = yes
smtpd_sasl_type = dovecot
smtpd_sasl_path = {dovecot.sasl_socket_path}
message_size_limit = {MESSAGE_SIZE_LIMIT}
smtpd_client_connection_count_limit = 0
smtpd_error_sleep_time = 0
biff = no
readme_directory = no
"""


def _master_cf(port: int, ipv6: bool, dovecot: Dovecot) -> str:
    listeners = [f"127.0.0.1:{port} inet n - n - - smtpd"]
    if ipv6:
        listeners.append(f"[::1]:{port} inet n - n - - smtpd")
    lda = " ".join(dovecot.lda_command())
    pipe = (
        "dovecot unix - n n - - pipe\n"
        f"  flags=DRhu user={dovecot.mail_user_name} argv={lda} -f ${{sender}} -d ${{user}}\n"
    )
    return "\n".join(listeners) + "\n" + _SERVICES + pipe


def _recipients_map(users: list[MailUser]) -> str:
    names = "|".join(re.escape(user.name) for user in users)
    domain = re.escape(TEST_DOMAIN)
    return f"/^({names})@{domain}$/ OK\n/^{re.escape(FRESH_USER_PREFIX)}[0-9a-f]+@{domain}$/ OK\n"


class Postfix:
    """A running private Postfix. Create it with ``Postfix.start(dovecot)``; always ``stop()`` it.

    SMTP at ``(host, smtp_port)`` (and ``(ipv6_host, smtp_port)`` when not None); mail for
    ``<user>@test.example`` is delivered into ``dovecot``'s mailbox of that user.
    """

    host = IPV4_LOOPBACK
    hostname = HOSTNAME

    def __init__(self, root: Path, dovecot: Dovecot) -> None:
        self.root = root
        self.dovecot = dovecot
        self.config_dir = root / "etc"
        self.maillog_path = root / "maillog"
        self.ipv6_host: str | None = IPV6_LOOPBACK if ipv6_loopback_available() else None
        self.smtp_port = 0
        self._daemon: ReapedDaemon | None = None

    @classmethod
    def start(cls, dovecot: Dovecot) -> Postfix:
        """Start a Postfix delivering into ``dovecot``; raises RuntimeError with its log on failure."""
        root = Path(tempfile.mkdtemp(prefix="mailgate-postfix-", dir="/tmp"))
        root.chmod(0o755)
        try:
            postfix = cls(root, dovecot)
            postfix._run()
        except BaseException:
            shutil.rmtree(root, ignore_errors=True)
            raise
        return postfix

    def _run(self) -> None:
        self.config_dir.mkdir(mode=0o755)
        (self.root / "queue").mkdir(mode=0o755)
        (self.root / "data").mkdir(mode=0o755)
        shutil.chown(self.root / "data", "postfix", "postfix")
        ipv6 = self.ipv6_host is not None
        (self.config_dir / "main.cf").write_text(_main_cf(self.root, self.dovecot, ipv6))
        (self.config_dir / "recipients").write_text(_recipients_map(list(self.dovecot.users.values())))
        for attempt in range(_START_ATTEMPTS):
            self.smtp_port = free_port(self.host, also_free_on=[IPV6_LOOPBACK] if ipv6 else [])
            (self.config_dir / "master.cf").write_text(_master_cf(self.smtp_port, ipv6, self.dovecot))
            if attempt == 0:
                self._check()
            daemon = ReapedDaemon(
                [str(MASTER_BINARY), "-c", str(self.config_dir), "-d"],
                output_path=self.root / "daemon.out",
                orphan_cleanup_dir=self.root,
            )
            self._daemon = daemon
            if daemon.wait_until_ready(self._greets, _START_TIMEOUT):
                return
            if "Address already in use" not in self.log():
                break  # not a lost race for a port: retrying will not help
        raise RuntimeError(f"Postfix did not start; its log:\n{self.log()}")

    def _check(self) -> None:
        checked = subprocess.run(
            [str(POSTFIX_BINARY), "-c", str(self.config_dir), "check"],
            capture_output=True,
            text=True,
            check=False,
        )
        if checked.returncode != 0:
            raise RuntimeError(f"postfix check failed:\n{checked.stdout}{checked.stderr}\n{self.log()}")

    def _greets(self) -> bool:
        greeting = read_greeting(self.host, self.smtp_port)
        # Another process may have grabbed the port between free_port() and master's bind.
        return greeting is not None and greeting.startswith(f"220 {HOSTNAME} ESMTP Postfix".encode())

    def stop(self) -> None:
        """Stop Postfix and every process it started, then delete its directory; idempotent."""
        if self._daemon is not None:
            self._daemon.stop()
            self._daemon = None
        shutil.rmtree(self.root, ignore_errors=True)

    @property
    def running(self) -> bool:
        return self._daemon is not None and self._daemon.exit_code is None

    def processes(self) -> list[int]:
        """Pids of Postfix's master and all its children (empty once stopped)."""
        return [] if self._daemon is None else self._daemon.descendants()

    def log(self) -> str:
        """Postfix's maillog and master's stdout/stderr, for failure messages."""
        parts = []
        for path in (self.root / "daemon.out", self.maillog_path):
            with contextlib.suppress(OSError):
                parts.append(f"--- {path.name}\n{path.read_text(errors='replace')}")
        return "\n".join(parts)

    def wait_for_delivery(
        self, user: MailUser | str, matches: Callable[[StoredMessage], bool], timeout: float = 20.0
    ) -> StoredMessage:
        """The first message in ``user``'s Dovecot INBOX for which ``matches`` is true, waiting for it.

        On timeout the error carries Postfix's and Dovecot's logs.
        """
        try:
            return self.dovecot.maildir(user).wait_for_message(matches, timeout)
        except TimeoutError as error:
            raise TimeoutError(f"{error}\n{self.log()}\n{self.dovecot.log()}") from None
