"""Sans-I/O protocol engines for the pre-authentication phase: bytes in, events and replies out."""
