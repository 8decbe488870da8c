"""Listeners, one session's orchestration, master and worker processes, signals."""
