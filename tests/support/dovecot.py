"""A private Dovecot (IMAP + POP3, plain TCP) on free loopback ports, started and stopped by the tests.

Recipe (Dovecot 2.3, as root, Debian 12 packages dovecot-imapd and dovecot-pop3d):
- Everything lives in a fresh ``/tmp/mailgate-dovecot-XXXX`` (mode 0755): ``dovecot.conf``,
  ``users/<name>`` (one passwd-file per user), ``run/`` (``base_dir``: sockets, ``master.pid``, the
  login chroot), ``state/`` (``state_dir``), ``log/``, ``mail/<user>/Maildir``. Nothing from
  /etc/dovecot is included.
- ``dovecot -c CONF -F`` runs in the foreground under a ``ReapedDaemon`` and is stopped with SIGTERM.
  Its own ``base_dir``, ``state_dir`` and ``instance_name`` keep several instances (one per xdist
  worker, and other people's) apart; none touches /run/dovecot or /var/lib/dovecot.
- The built-in listener defaults (imap 143, imaps 993, pop3 110, pop3s 995) must be overridden
  explicitly: ``inet_listener imaps { port = 0 }`` disables one.
- ``ssl = no``, ``disable_plaintext_auth = no``, ``auth_mechanisms = plain login``,
  ``login_trusted_networks = 127.0.0.0/8 ::1`` (so ``ID``/``XCLIENT`` forwarding is honoured, and
  POP3 announces ``[XCLIENT]``), passwd-file passdb/userdb ``users/%Lu`` with ``{PLAIN}`` passwords.
- Mail processes run as ``nobody``: uid/gid come from the passwd-file, homes and Maildirs must be
  created and chowned beforehand (Dovecot cannot mkdir in a root-owned directory as ``nobody``).
- The whole tree must be traversable by ``dovecot`` (auth), ``dovenull`` (login processes),
  ``nobody`` (mail, dovecot-lda) and ``postfix``: pytest's ``tmp_path`` (under a 0700 directory) is not.

Pitfalls found:
- Dovecot's auth penalty (anvil) delays every login from an IP after a failure by 2-15 s, and it is not
  lifted for trusted networks; ``unix_listener anvil-auth-penalty { mode = 0 }`` disables it.
  A failed login still takes about 0.5 s (the auth failure flush), even with ``auth_failure_delay = 0``.
- ``dovecot-lda`` runs as the mail user (from Postfix's pipe): it needs ``stats-writer`` mode 0666 and a
  log file it can write (``protocol lda { log_path }``, chowned), or it fails with EX_TEMPFAIL (75).
- ``mail_max_userip_connections`` defaults to 10 per user and IP; raised so concurrency tests do not
  hit it.
- One shared passwd-file is re-checked for changes at most once a second, so a user added to it is
  "unknown" for up to a second; a file per user (path ``users/%Lu``) is read at each lookup, so a user
  exists as soon as its file does. A missing file is logged as "missing passwd file" (unknown user).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import tempfile
import threading
from collections.abc import Iterable
from pathlib import Path

from tests.support.loopback import (
    IPV4_LOOPBACK,
    IPV6_LOOPBACK,
    free_port,
    ipv6_loopback_available,
    read_greeting,
)
from tests.support.mailstore import Maildir, MailUser
from tests.support.subreaper import ReapedDaemon

DOVECOT_BINARY = Path("/usr/sbin/dovecot")
DOVECOT_LDA_BINARY = Path("/usr/lib/dovecot/dovecot-lda")
IMAP_LOGIN_BINARY = Path("/usr/lib/dovecot/imap-login")
POP3_LOGIN_BINARY = Path("/usr/lib/dovecot/pop3-login")
REQUIRED_BINARIES = (DOVECOT_BINARY, DOVECOT_LDA_BINARY, IMAP_LOGIN_BINARY, POP3_LOGIN_BINARY)

# Users every instance has. "tricky" has a password that needs quoting or literals in IMAP.
DEFAULT_USERS = (
    MailUser("alice", "alice-password"),
    MailUser("bob", "bob-password"),
    MailUser("tricky", 'p%ss w"rd\\{1}'),
)
# add_user() names fresh users FRESH_USER_PREFIX + hex digits; Postfix accepts mail for that pattern.
FRESH_USER_PREFIX = "user-"
MAIL_SYSTEM_USER = "nobody"
SASL_SOCKET_NAME = "auth-postfix"
_START_ATTEMPTS = 5
_START_TIMEOUT = 20.0


def missing_binaries() -> list[Path]:
    """Dovecot binaries this module needs that are not installed."""
    return [binary for binary in REQUIRED_BINARIES if not binary.exists()]


def _config_text(
    root: Path, addresses: Iterable[str], imap_port: int, pop3_port: int, instance_name: str
) -> str:
    listen = ", ".join(addresses)
    return f"""\
# Written by tests/support/dovecot.py for one test session.
protocols = imap pop3
instance_name = {instance_name}
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/log/dovecot.log
info_log_path = {root}/log/dovecot.log
listen = {listen}
shutdown_clients = yes
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_failure_delay = 0
auth_verbose = yes
login_trusted_networks = 127.0.0.0/8 ::1
mail_location = maildir:~/Maildir
first_valid_uid = 1
default_client_limit = 2000
passdb {{
  driver = passwd-file
  args = scheme=PLAIN {root}/users/%Lu
}}
userdb {{
  driver = passwd-file
  args = {root}/users/%Lu
}}
service imap-login {{
  inet_listener imap {{
    address = {listen}
    port = {imap_port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    address = {listen}
    port = {pop3_port}
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
service auth {{
  unix_listener {SASL_SOCKET_NAME} {{
    mode = 0666
  }}
}}
service stats {{
  unix_listener stats-writer {{
    mode = 0666
  }}
}}
protocol imap {{
  mail_max_userip_connections = 1000
}}
protocol pop3 {{
  mail_max_userip_connections = 1000
}}
protocol lda {{
  log_path = {root}/log/lda.log
  info_log_path = {root}/log/lda.log
}}
"""


class Dovecot:
    """A running private Dovecot. Create it with ``Dovecot.start()``; always ``stop()`` it.

    Reach IMAP at ``(host, imap_port)`` and POP3 at ``(host, pop3_port)``; when ``ipv6_host`` is not
    None the same ports also listen on it.
    """

    host = IPV4_LOOPBACK

    def __init__(self, root: Path, users: Iterable[MailUser]) -> None:
        self.root = root
        self.config_path = root / "dovecot.conf"
        self.users_dir = root / "users"
        self.log_path = root / "log" / "dovecot.log"
        self.lda_log_path = root / "log" / "lda.log"
        self.sasl_socket_path = root / "run" / SASL_SOCKET_NAME
        mail_account = pwd.getpwnam(MAIL_SYSTEM_USER)
        self.mail_uid = mail_account.pw_uid
        self.mail_gid = mail_account.pw_gid
        self.mail_user_name = mail_account.pw_name
        self.ipv6_host: str | None = IPV6_LOOPBACK if ipv6_loopback_available() else None
        self.imap_port = 0
        self.pop3_port = 0
        self.users: dict[str, MailUser] = {}
        self._users_lock = threading.Lock()
        self._daemon: ReapedDaemon | None = None
        for directory in ("run", "state", "log", "mail", "users"):
            (root / directory).mkdir(mode=0o755)
        for user in users:
            self._add(user)

    @classmethod
    def start(cls, users: Iterable[MailUser] = DEFAULT_USERS) -> Dovecot:
        """Start a Dovecot serving ``users`` (empty INBOXes); raises RuntimeError with its log on failure."""
        # Under /tmp, not tmp_path: every daemon user must traverse it, and socket paths must stay short.
        root = Path(tempfile.mkdtemp(prefix="mailgate-dovecot-", dir="/tmp"))
        root.chmod(0o755)
        try:
            dovecot = cls(root, users)
            dovecot._run()
        except BaseException:
            shutil.rmtree(root, ignore_errors=True)
            raise
        return dovecot

    def _run(self) -> None:
        self.lda_log_path.touch(mode=0o644)
        os.chown(self.lda_log_path, self.mail_uid, self.mail_gid)
        addresses = [self.host] if self.ipv6_host is None else [self.host, self.ipv6_host]
        for _ in range(_START_ATTEMPTS):
            self.imap_port = free_port(self.host, also_free_on=addresses[1:])
            self.pop3_port = self.imap_port
            while self.pop3_port == self.imap_port:
                self.pop3_port = free_port(self.host, also_free_on=addresses[1:])
            self.config_path.write_text(
                _config_text(self.root, addresses, self.imap_port, self.pop3_port, self.root.name)
            )
            self.config_path.chmod(0o644)
            daemon = ReapedDaemon(
                [str(DOVECOT_BINARY), "-c", str(self.config_path), "-F"],
                output_path=self.root / "log" / "daemon.out",
                orphan_cleanup_dir=self.root,
            )
            self._daemon = daemon
            if daemon.wait_until_ready(self._greets, _START_TIMEOUT):
                return
            if "Address already in use" not in self.log():
                break  # not a lost race for a port: retrying will not help
        raise RuntimeError(f"Dovecot did not start; its log:\n{self.log()}")

    def _greets(self) -> bool:
        imap = read_greeting(self.host, self.imap_port)
        pop3 = read_greeting(self.host, self.pop3_port)
        # Another process may have grabbed the port between free_port() and Dovecot's bind.
        return (
            imap is not None
            and imap.startswith(b"* OK")
            and b"Dovecot" in imap
            and pop3 is not None
            and pop3.startswith(b"+OK")
            and b"Dovecot" in pop3
        )

    def stop(self) -> None:
        """Stop Dovecot and every process it started, then delete its directory; idempotent."""
        if self._daemon is not None:
            self._daemon.stop()
            self._daemon = None
        shutil.rmtree(self.root, ignore_errors=True)

    @property
    def running(self) -> bool:
        return self._daemon is not None and self._daemon.exit_code is None

    def processes(self) -> list[int]:
        """Pids of Dovecot's master and all its children (empty once stopped)."""
        return [] if self._daemon is None else self._daemon.descendants()

    def log(self) -> str:
        """Dovecot's own log, dovecot-lda's log and the master's stdout/stderr, for failure messages."""
        parts = []
        for path in (self.root / "log" / "daemon.out", self.log_path, self.lda_log_path):
            with contextlib.suppress(OSError):
                parts.append(f"--- {path.name}\n{path.read_text(errors='replace')}")
        return "\n".join(parts)

    def add_user(self, name: str | None = None, password: str | None = None) -> MailUser:
        """Create a user (by default a fresh ``user-<hex>`` with a random password), usable at once.

        Postfix accepts mail for ``user-<hex>`` names and for users that existed when it started only.
        """
        user = MailUser(
            name or FRESH_USER_PREFIX + secrets.token_hex(6),
            password if password is not None else secrets.token_urlsafe(12),
        )
        self._add(user)
        return user

    def _add(self, user: MailUser) -> None:
        with self._users_lock:
            if user.name in self.users:
                raise ValueError(f"user {user.name} exists already")
            self.maildir(user).create()
            self.users[user.name] = user
        ids = f"{self.mail_uid}:{self.mail_gid}"
        entry = f"{user.name}:{{PLAIN}}{user.password}:{ids}::{self._home(user.name)}::\n"
        # Write then rename: Dovecot must never read a half-written entry.
        staging = self.users_dir / f".{user.name}.new"
        staging.write_text(entry)
        staging.chmod(0o644)  # the auth process runs as user "dovecot"
        staging.rename(self.users_dir / user.name)

    def _home(self, name: str) -> Path:
        return self.root / "mail" / name

    def maildir(self, user: MailUser | str) -> Maildir:
        """The INBOX of ``user`` as a Maildir on disk."""
        name = user if isinstance(user, str) else user.name
        return Maildir(self._home(name) / "Maildir", self.mail_uid, self.mail_gid)

    def lda_command(self) -> list[str]:
        """dovecot-lda argv for this Dovecot: append ``-d USER``, feed the message, run as the mail user."""
        return [str(DOVECOT_LDA_BINARY), "-c", str(self.config_path)]
