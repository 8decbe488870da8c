"""mailgate: a mail proxy that reads nginx's mail configuration."""

__version__ = "0.1.0"
