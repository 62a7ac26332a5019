"""``code_url`` (upstream's ``codeUrl``): code fetched over HTTPS before a run, off unless
a ``RemoteCodePolicy`` enables it."""

from .policy import RemoteCodePolicy

__all__ = ["RemoteCodePolicy"]
