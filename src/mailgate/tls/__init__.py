"""TLS: an SSLContext per server from its configuration, plus the libssl calls Python's ssl lacks."""
