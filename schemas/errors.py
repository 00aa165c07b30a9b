"""The root of staffwork's error hierarchy, and the errors of the data layer.

The whole tree is drawn in ``bus/errors.py``, which adds the transport's errors; this module holds
only what the data layer raises, so that ``schemas`` imports nothing else of ours.

Every error carries its facts as attributes and says them in one line that names the offending
value, e.g. ``agent 'metrcs' is not in team 'incident' (known: deploys, logs, metrics)``.
"""

from __future__ import annotations


class StaffworkError(Exception):
    """Base class of every error staffwork raises on purpose."""


class SpecError(StaffworkError):
    """A team or agent spec is invalid.

    ``source`` is the file (or ``<string>``), ``path`` the location in the document
    (``agents[1].max_turns``), ``line`` the line number when it could be found, and ``value`` the
    offending value as written.
    """

    def __init__(
        self,
        reason: str,
        *,
        source: str,
        path: str = "",
        line: int | None = None,
        value: object = None,
    ) -> None:
        self.reason = reason
        self.source = source
        self.path = path
        self.line = line
        self.value = value
        where = source if line is None else f"{source}:{line}"
        super().__init__(f"{where}: {path}: {reason}" if path else f"{where}: {reason}")
