"""Sans-I/O protocol engines for the pre-authentication phase: bytes in, events and replies out.

`ImapPreAuth`, `Pop3PreAuth` and `SmtpPreAuth` (in `imap`, `pop3`, `smtp`) answer a client exactly as nginx
does until its credentials are complete; `PreAuthEngine` (in `engine`) documents how a session drives
them, `events` the events they emit, `sasl` the shared SASL rules and `make_salt`.
"""
