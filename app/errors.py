"""The app's own errors (the hypervisor's are hypervisor.errors)."""


class UsageError(Exception):
    """Bad command-line input: one line, exit 2."""
