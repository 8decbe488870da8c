"""Run mailgate on its embedded default configuration with everything it talks to, on this machine.

Started by scripts/quickstart (as root, after installing mailgate and Dovecot):
- a demo user with a fresh random password;
- the bundled auth service, mailgate-auth, on 127.0.0.1:9143 (where the embedded configuration asks);
- a private Dovecot under the prefix on 127.0.0.1:10143 (IMAP) and 127.0.0.1:10110 (POP3), the local
  backend; SMTP logins are routed to 127.0.0.1:25, the machine's own mail server if it has one;
- mailgate itself in the foreground (Ctrl-C stops everything).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import bcrypt

PREFIX = Path(os.environ.get("MAILGATE_PREFIX", "/var/lib/mailgate"))
BIN = Path(sys.executable).parent
DOVECOT = Path("/usr/sbin/dovecot")
NOBODY = 65534
IMAP_BACKEND, POP3_BACKEND, SMTP_BACKEND = 10143, 10110, 25

DOVECOT_CONF = """\
# The quickstart's private Dovecot: the local backend behind mailgate's embedded configuration.
protocols = imap pop3
instance_name = mailgate-quickstart
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
login_trusted_networks = 127.0.0.0/8
mail_location = maildir:~/Maildir
first_valid_uid = 1
passdb {{
  driver = passwd-file
  args = scheme=PLAIN {root}/users
}}
userdb {{
  driver = passwd-file
  args = {root}/users
}}
service imap-login {{
  inet_listener imap {{
    port = {imap}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    port = {pop3}
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
"""


def start_dovecot(password: str) -> subprocess.Popen[bytes] | None:
    if not DOVECOT.exists():
        print("Dovecot is not installed: IMAP and POP3 logins will find no backend.", file=sys.stderr)
        return None
    root = PREFIX / "quickstart-dovecot"
    for directory in (root / "run", root / "state", root / "mail" / "demo" / "Maildir"):
        directory.mkdir(parents=True, exist_ok=True)
    for directory in (root / "mail", root / "mail" / "demo", root / "mail" / "demo" / "Maildir"):
        os.chown(directory, NOBODY, NOBODY)
    users = root / "users"
    users.write_text(f"demo:{{PLAIN}}{password}:{NOBODY}:{NOBODY}::{root}/mail/demo::\n")
    users.chmod(0o640)
    shutil.chown(users, group="dovecot")
    conf = root / "dovecot.conf"
    conf.write_text(DOVECOT_CONF.format(root=root, imap=IMAP_BACKEND, pop3=POP3_BACKEND))
    return subprocess.Popen([str(DOVECOT), "-c", str(conf), "-F"], start_new_session=True)


def start_auth_service(password: str) -> subprocess.Popen[bytes]:
    users = PREFIX / "conf" / "mailgate-auth.users"
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt()).decode()
    users.write_text(f"demo:{{BLF-CRYPT}}{hashed}\n")
    users.chmod(0o600)
    command = [
        str(BIN / "mailgate-auth"),
        "--users",
        str(users),
        "--listen",
        "127.0.0.1:9143",
        "--backend",
        f"imap=127.0.0.1:{IMAP_BACKEND}",
        "--backend",
        f"pop3=127.0.0.1:{POP3_BACKEND}",
        "--backend",
        f"smtp=127.0.0.1:{SMTP_BACKEND}",
    ]
    return subprocess.Popen(command, start_new_session=True)


def _stop_on_signal(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # TERM/HUP end the quickstart like Ctrl-C: everything it started is stopped


def main() -> int:
    signal.signal(signal.SIGTERM, _stop_on_signal)
    signal.signal(signal.SIGHUP, _stop_on_signal)
    password = secrets.token_urlsafe(12)
    test = subprocess.run([str(BIN / "mailgate"), "-p", str(PREFIX), "-t", "-q"], check=False)
    if test.returncode != 0:
        return test.returncode
    helpers: list[subprocess.Popen[bytes]] = []
    try:
        helpers += [process for process in (start_dovecot(password), start_auth_service(password)) if process]
        time.sleep(1)
    except BaseException:
        for helper in helpers:
            helper.terminate()
        raise
    print(
        f"""
mailgate runs on its embedded default configuration (prefix {PREFIX}; `mailgate -T` prints it):
  IMAP 127.0.0.1:1143 (STARTTLS)   IMAPS 127.0.0.1:1993
  POP3 127.0.0.1:1110 (STLS)       POP3S 127.0.0.1:1995
  SMTP 127.0.0.1:1587 (STARTTLS)   SMTPS 127.0.0.1:1465
Log in as  demo  with password  {password}  for example:
  curl --cacert {PREFIX}/conf/mailgate-selfsigned.crt --user demo:{password} imaps://localhost:1993/INBOX
  openssl s_client -starttls imap -connect 127.0.0.1:1143 -quiet    (then: a LOGIN demo {password})
Logs: {PREFIX}/logs/error.log. Ctrl-C stops mailgate, the auth service and the demo backend.
""",
        flush=True,
    )
    try:
        mailgate = subprocess.Popen([str(BIN / "mailgate"), "-p", str(PREFIX), "-g", "daemon off;"])
        try:
            return mailgate.wait()
        except KeyboardInterrupt:
            mailgate.send_signal(signal.SIGQUIT)
            return mailgate.wait()
    finally:
        for helper in helpers:
            helper.terminate()
            helper.wait()


if __name__ == "__main__":
    sys.exit(main())
