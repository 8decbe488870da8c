"""Backend login per protocol, the PROXY protocol, and the byte relay."""
