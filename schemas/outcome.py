"""Outcomes: a rubric the deliverable must meet, graded by a separate grader, with revisions.

An :class:`Outcome` (a team's ``[outcome]``, or a submit's, which replaces it) is a markdown rubric
whose top-level list items are criteria for the grader's model, machine checks (:class:`Check`) that
need no model, and ``max_iterations``. The lead sends a :class:`GradeRequest` after each attempt; the
grader, in a fresh context, answers with a :class:`GradeVerdict`; the session's result carries an
:class:`OutcomeReport`.
"""

from __future__ import annotations

import re
import textwrap
from typing import Annotated, Any, Literal

import msgspec

from schemas.base import Message, Usage
from schemas.prices import ModelPrice

MAX_ITERATIONS = 20

CheckKind = Literal["file_exists", "contains", "matches", "json_schema", "number_in_range", "sql_number"]
OutcomeResult = Literal["satisfied", "needs_revision", "max_iterations_reached", "failed"]
CriterionStatus = Literal["passed", "failed", "not_graded"]


class Check(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A criterion graded without a model.

    - ``file_exists``: ``path`` is in the session's workspace.
    - ``contains``: ``path`` (or the answer, when ``path`` is empty) contains ``value``.
    - ``matches``: ``path`` (or the answer) matches the regex ``pattern`` (``re.search``, multiline).
    - ``json_schema``: ``path`` is JSON that validates against ``schema``.
    - ``number_in_range``: the first group of ``pattern`` (or, without a group, the whole match) in
      ``path`` (or the answer) is a number within ``min``..``max`` (inclusive).
    - ``sql_number``: that number equals, within ``tolerance``, the value ``query`` computes over the
      session's data files (one SQLite SELECT, as the ``sql`` tool runs it): a figure in a report
      checked against its source.
    """

    #: the criterion as the verdict names it
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    #: how it is checked (see the kinds above)
    kind: CheckKind
    #: a file in the session's workspace, relative (empty: the lead's answer)
    path: str = ""
    #: the text ``contains`` looks for
    value: str = ""
    #: the regex of ``matches`` and ``number_in_range``
    pattern: str = ""
    #: the JSON Schema a ``json_schema`` check validates ``path`` against
    schema: dict[str, Any] | None = None
    #: the lowest number ``number_in_range`` accepts (inclusive)
    min: float | None = None
    #: the highest number ``number_in_range`` accepts (inclusive)
    max: float | None = None
    #: the SELECT whose first value a ``sql_number`` check compares with the number found
    query: str = ""
    #: how far the number found may be from the query's value (``sql_number``; rounding)
    tolerance: Annotated[float, msgspec.Meta(ge=0)] = 0.0

    def __post_init__(self) -> None:
        path = self.path
        if path and (path.startswith("/") or "\\" in path or ".." in path.split("/")):
            raise ValueError(f"check {self.name!r}: path {path!r} must be relative, inside the workspace")
        if self.kind in ("file_exists", "json_schema") and not path:
            raise ValueError(f"check {self.name!r}: {self.kind} needs a path")
        if self.kind == "contains" and not self.value:
            raise ValueError(f"check {self.name!r}: contains needs a value")
        if self.kind == "sql_number" and not self.query.strip():
            raise ValueError(f"check {self.name!r}: sql_number needs a query")
        if self.kind in ("matches", "number_in_range", "sql_number"):
            if not self.pattern:
                raise ValueError(f"check {self.name!r}: {self.kind} needs a pattern")
            try:
                re.compile(self.pattern)
            except re.error as exc:
                raise ValueError(
                    f"check {self.name!r}: pattern {self.pattern!r} is not a regex: {exc}"
                ) from None
        if self.kind == "json_schema" and not isinstance(self.schema, dict):
            raise ValueError(f"check {self.name!r}: json_schema needs a schema (a table)")
        if self.kind == "number_in_range":
            if self.min is None and self.max is None:
                raise ValueError(f"check {self.name!r}: number_in_range needs min and/or max")
            if self.min is not None and self.max is not None and self.min > self.max:
                raise ValueError(f"check {self.name!r}: min {self.min} is above max {self.max}")


class Outcome(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What the deliverable must meet, and how many attempts it gets (1 to 20, default 3)."""

    #: markdown: each top-level list item (or paragraph) is a criterion the grader's model grades
    rubric: str = ""
    #: criteria graded without a model
    checks: list[Check] = msgspec.field(default_factory=list)
    #: how many attempts the deliverable gets (1 to 20)
    max_iterations: Annotated[int, msgspec.Meta(ge=1, le=MAX_ITERATIONS)] = 3
    #: what the outcome is about, for people reading the trace
    description: str = ""

    def __post_init__(self) -> None:
        if not self.rubric.strip() and not self.checks:
            raise ValueError("an outcome needs a rubric or at least one check")
        names = [check.name for check in self.checks]
        for name in names:
            if names.count(name) > 1:
                raise ValueError(f"check name {name!r} is used twice")

    def criteria(self) -> list[str]:
        """The rubric's criteria: each list item (``-``, ``*``, ``+`` or ``1.``, indented at most
        three spaces after the rubric's common indentation) with the lines that continue it, and each
        paragraph outside a list as a criterion of its own (headings are not criteria)."""
        items: list[str] = []
        open_item = False  # the previous line belongs to an item or paragraph that may continue
        for line in textwrap.dedent(self.rubric).splitlines():
            if not line.strip() or line.lstrip().startswith("#"):  # blank lines and headings end an item
                open_item = False
                continue
            bullet = re.match(r"^ {0,3}(?:[-*+]|\d+[.)])\s+(.*)$", line)
            if bullet:
                items.append(bullet.group(1).strip())
                open_item = True
            elif open_item and items:
                items[-1] += " " + line.strip()
            else:
                items.append(line.strip())
                open_item = True
        return [item for item in items if item]


class CriterionVerdict(msgspec.Struct, frozen=True, kw_only=True):
    """One criterion's grade: ``passed``, ``failed`` or ``not_graded`` (with why)."""

    #: the criterion: a rubric item's text, or a check's name
    criterion: str
    #: ``rubric`` (graded by the model) or the check's kind
    kind: str
    #: the grade
    status: CriterionStatus
    #: why, in a sentence or two
    explanation: str = ""


class GradeRequest(Message, frozen=True, kw_only=True, tag="outcome.grade.v1"):
    """Grade attempt ``iteration`` of a session's deliverable (sent by the lead to the grader)."""

    #: the outcome's id, the same for every attempt of a session's turn
    outcome_id: str
    #: the attempt graded, from 1
    iteration: Annotated[int, msgspec.Meta(ge=1)]
    #: the session's turn whose deliverable is graded (0: the submit's, n: the n-th follow-up's)
    turn: Annotated[int, msgspec.Meta(ge=0)] = 0
    #: what the deliverable must meet
    outcome: Outcome
    #: the session's task
    task: str
    #: the lead's answer on this attempt
    answer: str
    #: the report's path in the session's workspace
    report_path: str = ""
    #: the model the grader uses for rubric criteria (the team's)
    model: str = ""
    #: the team's own model prices, for the cost of the grader's model call
    prices: list[ModelPrice] = msgspec.field(default_factory=list)


class GradeVerdict(Message, frozen=True, kw_only=True, tag="outcome.verdict.v1"):
    """The grader's answer: the overall result, an explanation (the feedback for a revision) and
    every criterion's verdict."""

    #: the outcome's id
    outcome_id: str
    #: the attempt graded, from 1
    iteration: int
    #: the session's turn graded (0: the submit's)
    turn: int = 0
    #: the overall result of this attempt
    result: OutcomeResult
    #: why: the feedback the lead revises with
    explanation: str
    #: each criterion's grade
    criteria: list[CriterionVerdict] = msgspec.field(default_factory=list)
    #: tokens and cost of the grader's model call
    usage: Usage = msgspec.field(default_factory=Usage)


class OutcomeReport(msgspec.Struct, frozen=True, kw_only=True):
    """A session's outcome, in its result: the final result and every iteration's verdict."""

    #: the outcome's id
    outcome_id: str
    #: the final result
    result: OutcomeResult
    #: every attempt's verdict, first to last
    iterations: list[GradeVerdict] = msgspec.field(default_factory=list)
