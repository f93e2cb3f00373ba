"""How a credential is shown to operators."""


def mask(secret: str) -> str:
    """Show a credential the way operators may see it: only its last 4 characters."""
    tail = secret[-4:] if len(secret) >= 12 else ""
    return f"…{tail}" if tail else "…"
