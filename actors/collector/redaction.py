"""Redaction: strings that look like API keys or bearer tokens never reach a store or an exporter."""

from __future__ import annotations

import re

_SECRETS = re.compile(
    r"(sk-ant-[A-Za-z0-9_\-]{10,}|sk-[A-Za-z0-9_\-]{20,}|AKIA[0-9A-Z]{16}|"
    r"(?i:bearer)\s+[A-Za-z0-9._\-]{20,}|xox[abpr]-[A-Za-z0-9\-]{10,}|gh[pousr]_[A-Za-z0-9]{20,}|"
    r"whsec_[A-Za-z0-9+/=]{16,})"
)


# Every pattern above starts with one of the prefixes ``redact`` looks for (in lower case): text with
# none of them (nearly all) skips the regex, which costs several times more than the checks (the
# collector redacts every event). Each check scans the whole text, so they are few: one search covers
# the five GitHub prefixes.
_GITHUB = re.compile(r"gh[pousr]_")


def redact(text: str) -> str:
    """Replace anything that looks like an API key or a bearer token."""
    lowered = text.lower()
    if (
        "sk-" in lowered
        or "akia" in lowered
        or "bearer" in lowered
        or "xox" in lowered
        or "whsec_" in lowered
        or _GITHUB.search(lowered) is not None
    ):
        return _SECRETS.sub("[redacted]", text)
    return text
