"""The timeline page, rendered from a real trace and loaded in headless Chromium: lanes and spans are
drawn, deep links open a span's details, hostile model output stays text, and the page has no errors.

Chromium runs as a subprocess per page (``--dump-dom`` or ``--screenshot``), with a fresh profile and
``--enable-logging=stderr``. Errors are caught two ways: the page's first script counts uncaught errors
into ``<html data-errors>``, and every console line Chromium logs is an error here, since the page
writes nothing to the console. Chromium 156 logs console output and uncaught exceptions alike, at INFO,
as ``[pid:tid:date:INFO:CONSOLE:12] "Uncaught ReferenceError: ...", source: file:///... (12)`` (older
releases write ``CONSOLE(12)``); ``test_detector_catches_a_page_error`` proves the check can fail.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from dataclasses import dataclass
from datetime import datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from actors.views.timeline import render_html, timeline
from schemas.base import ErrorInfo
from schemas.trace import (
    AgentMessage,
    AgentToolResult,
    AgentToolUse,
    AnyTraceEvent,
    ModelRequestEnd,
    ModelRequestStart,
    SessionErrorEvent,
    SessionStatusIdle,
    ThreadInterrupted,
    ThreadStatusRunning,
    ToolConfirmationAnswered,
    ToolConfirmationRequested,
)
from tests.helpers import incident_trace

CHROMIUM_TIMEOUT = 60.0
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--enable-logging=stderr",
    "--v=0",
    "--virtual-time-budget=5000",
]
CONSOLE = re.compile(r':CONSOLE(?::\d+|\(\d+\))\] "(?P<message>.*)", source: ', re.MULTILINE)
HOSTILE = (
    "</script><script>alert(1)</script>"
    "<script>document.documentElement.dataset.pwned = '1'</script>"
    "<img src=x onerror=\"document.documentElement.dataset.pwned = '2'\">\n& &amp; <!-- \u2028 ]]>"
)
THREADS = [
    "lead",
    "t-toolu_off_lead_1_0",
    "t-toolu_off_lead_1_1",
    "t-toolu_off_lead_1_2",
    "t-toolu_off_lead_1_3",
]


class Dom(HTMLParser):
    """The dumped DOM: every element's attributes, and the text inside ``#details``."""

    def __init__(self) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str]]] = []
        self.details_parts: list[str] = []
        self.depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {key: value or "" for key, value in attrs}
        self.elements.append((tag, values))
        if tag in ("br", "hr", "img", "input", "meta", "link", "wbr"):
            return
        if self.depth:
            self.depth += 1
        elif values.get("id") == "details":
            self.depth = 1

    def handle_endtag(self, tag: str) -> None:
        if self.depth:
            self.depth -= 1

    def handle_data(self, data: str) -> None:
        if self.depth:
            self.details_parts.append(data)

    def attrs(self, tag: str) -> dict[str, str]:
        return next(values for name, values in self.elements if name == tag)

    def with_attr(self, key: str) -> list[dict[str, str]]:
        return [values for _, values in self.elements if key in values]

    @property
    def details(self) -> str:
        return "".join(self.details_parts)


@dataclass
class Page:
    dom: Dom
    stderr: str

    @property
    def console(self) -> list[str]:
        return [match["message"] for match in CONSOLE.finditer(self.stderr)]

    def assert_clean(self) -> None:
        root = self.dom.attrs("html")
        assert "data-errors" not in root, f"page errors: {root.get('data-last-error')}"
        assert self.console == []
        assert self.dom.attrs("body").get("data-ready") == "1"


@pytest.fixture(scope="module")
def chromium() -> str:
    found = shutil.which("chromium")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not on PATH; CI must install it (apt-get install chromium)")
        pytest.skip("chromium is not on PATH")
    return found


def run_chromium(binary: str, profile: Path, *args: str) -> tuple[str, str]:
    """Run Chromium to completion in its own process group (killed whole on timeout)."""
    proc = subprocess.Popen(
        [binary, *FLAGS, f"--user-data-dir={profile}", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=CHROMIUM_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    text = err.decode(errors="replace")
    assert proc.returncode == 0, f"chromium exited {proc.returncode}: {text[-2000:]}"
    return out.decode(errors="replace"), text


def load(binary: str, tmp_path: Path, page: Path, span: str = "") -> Page:
    url = page.as_uri() + (f"#span={quote(span)}" if span else "")
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    out, err = run_chromium(binary, profile, "--dump-dom", url)
    dom = Dom()
    dom.feed(out)
    dom.close()
    return Page(dom, err)


def write_page(tmp_path: Path, events: list[AnyTraceEvent], session_id: str = "") -> Path:
    page = tmp_path / "timeline.html"
    page.write_text(render_html(session_id or events[0].session_id, events), encoding="utf-8")
    return page


def test_timeline_data_pairs_spans_and_marks_unfinished_ones() -> None:
    events = incident_trace()
    cut = next(i for i, e in enumerate(events) if isinstance(e, AgentToolResult))
    data = timeline("s", events[:cut])  # the first tool result never came: everything open
    spans = {s["id"]: s for s in data["spans"]}
    assert [lane["thread"] for lane in data["lanes"]] == THREADS
    assert spans["tool-toolu_off_lead_1_0"]["end"] is None
    assert spans["thread-t-toolu_off_lead_1_0"]["end"] is None
    assert spans["model-t-toolu_off_lead_1_0-1"]["end"] is not None

    full = timeline("s", events)
    kinds = [s["kind"] for s in full["spans"]]
    assert (kinds.count("tool"), kinds.count("model"), kinds.count("thread")) == (13, 10, 5)
    assert all(s["end"] is not None for s in full["spans"])
    assert full["session"]["status"] == "idle"
    assert timeline("s", events + events[10:30]) == full  # redelivered events count once
    assert timeline("s", [])["lanes"] == []
    assert 'id="trace-data">{"session":' in render_html("s", [])


def test_a_redelivered_runs_stale_model_start_does_not_take_the_next_end() -> None:
    base = incident_trace()[0].time
    ids = {"session_id": "s", "thread_id": "t-1", "agent": "logs"}

    def at(seconds: float) -> datetime:
        return base + timedelta(seconds=seconds)

    events: list[AnyTraceEvent] = [
        ThreadStatusRunning(**ids, span_id="run1", time=at(0)),
        ModelRequestStart(**ids, span_id="run1", time=at(0.001), model="m"),
        # the worker died mid-call; the message was redelivered to another worker: a new run
        ThreadStatusRunning(**ids, span_id="run2", time=at(5)),
        ModelRequestStart(**ids, span_id="run2", time=at(5.001), model="m"),
        ModelRequestEnd(**ids, span_id="run2", time=at(5.1), model="m", duration_ms=99.0),  # type: ignore[arg-type]
    ]
    spans = {s["id"]: s for s in timeline("s", events)["spans"]}
    assert spans["model-t-1-1"]["end"] is None  # the dead run's call never ended
    assert spans["model-t-1-2"]["end"] is not None  # the real call, 0.1 s


def test_a_lead_that_failed_for_good_is_failed() -> None:
    events = [e for e in incident_trace() if not isinstance(e, SessionStatusIdle)]
    failure = ErrorInfo(kind="RuntimeError", message="the lead crashed")
    data = timeline("s", [*events, SessionErrorEvent(session_id="s", time=events[-1].time, error=failure)])
    assert data["session"]["status"] == "failed"


def confirmations() -> list[AnyTraceEvent]:
    """The incident trace, then: an allowed and a denied confirmation, one that waits, and one an
    interrupt closed (then its thread's interrupt)."""
    events = incident_trace()
    base = events[-1].time
    logs: dict[str, Any] = {"session_id": events[0].session_id, "thread_id": THREADS[2], "agent": "logs"}

    def at(seconds: float) -> datetime:
        return base + timedelta(seconds=seconds)

    for n, call in enumerate(("tu_allow", "tu_deny", "tu_wait", "tu_cut")):
        events += [
            AgentToolUse(**logs, time=at(n), tool_use_id=call, name="sql", input={"query": "select 1"}),
            ToolConfirmationRequested(**logs, time=at(n), tool_use_id=call, name="sql", timeout_s=60,
                                      answer_subject=f"sw.s.x.in.confirm.{call}"),
        ]  # fmt: skip
    events += [
        ToolConfirmationAnswered(**logs, time=at(5), tool_use_id="tu_allow", name="sql", result="allow",
                                 by="run:alice"),
        AgentToolResult(**logs, time=at(5.5), tool_use_id="tu_allow", name="sql", content="1"),
        ToolConfirmationAnswered(**logs, time=at(6), tool_use_id="tu_deny", name="sql", result="deny",
                                 deny_message="not on the primary", by="api:acme"),
        ToolConfirmationAnswered(**logs, time=at(6.5), tool_use_id="tu_deny", name="sql", result="allow",
                                 by="late"),  # a second answer: the first counts
        AgentToolResult(**logs, time=at(6), tool_use_id="tu_deny", name="sql", is_error=True,
                        content="denied: not on the primary"),
        AgentToolResult(**logs, time=at(7), tool_use_id="tu_cut", name="sql", is_error=True,
                        content="[interrupted by the user: enough]"),
        ThreadInterrupted(**logs, time=at(7), reason="enough", by="bob"),
    ]  # fmt: skip
    return events


def test_confirmations_are_spans_from_the_request_to_the_answer() -> None:
    spans = {s["id"]: s for s in timeline("s", confirmations())["spans"]}

    def fields(span: str) -> dict[str, str]:
        return {f["k"]: f["v"] for f in spans[span]["fields"]}

    allowed, denied = spans["confirm-tu_allow"], spans["confirm-tu_deny"]
    assert (allowed["kind"], allowed["name"]) == ("confirm", "sql allowed by run:alice")
    assert allowed["end"] - allowed["start"] == pytest.approx(5.0)
    assert denied["name"] == "sql denied by api:acme"
    assert fields("confirm-tu_deny")["deny message"] == "not on the primary"
    assert fields("confirm-tu_deny")["answered by"] == "api:acme"
    assert fields("tool-tu_deny")["confirmation"] == "denied by api:acme"
    assert spans["confirm-tu_wait"]["end"] is None  # still waiting: drawn unfinished
    assert spans["confirm-tu_cut"]["name"] == "sql closed unanswered"
    assert spans["confirm-tu_cut"]["end"] is not None
    [interrupt] = [s for s in spans.values() if s["kind"] == "interrupt"]
    assert (interrupt["name"], interrupt["lane"]) == ("interrupted by bob", THREADS[2])
    assert {"k": "reason", "v": "enough", "pre": "1"} in interrupt["fields"]


def test_confirmations_and_interrupts_render(chromium: str, tmp_path: Path) -> None:
    page = load(chromium, tmp_path, write_page(tmp_path, confirmations()), span="confirm-tu_deny")

    page.assert_clean()
    spans = {values["data-span"]: values for values in page.dom.with_attr("data-span")}
    assert "k-confirm" in spans["confirm-tu_allow"]["class"].split()
    assert "open" in spans["confirm-tu_wait"]["class"].split()
    assert any(s.startswith("interrupt-") and "mark" in v["class"].split() for s, v in spans.items())
    assert "not on the primary" in page.dom.details
    assert "confirmation" in page.dom.details  # the kind's label


def test_fixture_renders_a_lane_per_thread(chromium: str, tmp_path: Path) -> None:
    page = load(chromium, tmp_path, write_page(tmp_path, incident_trace()))

    page.assert_clean()
    lanes = [values for values in page.dom.with_attr("data-thread") if "lane" in values["class"].split()]
    assert [lane["data-thread"] for lane in lanes] == THREADS
    spans = [values["data-span"] for values in page.dom.with_attr("data-span")]
    assert len(spans) == len(set(spans))
    counts = {kind: sum(s.startswith(f"{kind}-") for s in spans) for kind in ("tool", "model", "thread")}
    assert counts == {"tool": 13, "model": 10, "thread": 5}
    assert sum(s.startswith(("send-", "receive-", "file-")) for s in spans) == 9
    assert "Nothing selected" in page.dom.details


def test_deep_link_opens_a_tool_call(chromium: str, tmp_path: Path) -> None:
    events = incident_trace()
    use = next(e for e in events if isinstance(e, AgentToolUse) and e.name == "sql")
    result = next(e for e in events if isinstance(e, AgentToolResult) and e.tool_use_id == use.tool_use_id)

    page = load(chromium, tmp_path, write_page(tmp_path, events), span=f"tool-{use.tool_use_id}")

    page.assert_clean()
    selected = [v for v in page.dom.with_attr("data-span") if v["data-span"] == f"tool-{use.tool_use_id}"]
    assert len(selected) == 1
    assert "sel" in selected[0]["class"].split()
    details = page.dom.details
    assert use.tool_use_id in details
    assert use.input["query"] in details  # multi-line input, as written
    assert result.content in details


def test_hostile_text_stays_text(chromium: str, tmp_path: Path) -> None:
    events = incident_trace()
    lead_model = [e for e in events if isinstance(e, ModelRequestStart) and e.thread_id == "lead"]
    last = events[-1]
    fields: dict[str, Any] = {
        "session_id": last.session_id,
        "thread_id": "lead",
        "agent": "lead",
        "time": last.time,
    }
    events += [
        AgentMessage(text=HOSTILE, **fields),
        AgentToolUse(tool_use_id="toolu_evil", name="sql", input={"query": HOSTILE}, **fields),
        AgentToolResult(tool_use_id="toolu_evil", content=HOSTILE, is_error=True, **fields),
    ]
    file = write_page(tmp_path, events, session_id="ses_<b>bold</b>")
    html = file.read_text(encoding="utf-8")
    # Checked before Chromium runs: a payload that broke out would open an alert(1) dialog, which
    # blocks headless Chromium until the timeout instead of failing fast.
    assert html.count("</script>") == html.count("<script") == 3
    assert "<img" not in html
    assert "<title>session ses_&lt;b&gt;bold&lt;/b&gt; · timeline</title>" in html

    page = load(chromium, tmp_path, file, span=f"model-lead-{len(lead_model)}")

    page.assert_clean()
    assert "data-pwned" not in page.dom.attrs("html")
    assert [tag for tag, _ in page.dom.elements if tag in ("img", "b")] == []
    assert sum(tag == "script" for tag, _ in page.dom.elements) == 3
    assert HOSTILE in page.dom.details

    tool = load(chromium, tmp_path, file, span="tool-toolu_evil")
    tool.assert_clean()
    assert "data-pwned" not in tool.dom.attrs("html")
    assert tool.dom.details.count(HOSTILE) == 2  # input.query and result (the JSON form escapes quotes)


def test_detector_catches_a_page_error(chromium: str, tmp_path: Path) -> None:
    html = render_html("s", incident_trace()).replace(
        '<script type="application/json"',
        '<script>undefinedFunction();</script>\n<script type="application/json"',
        1,
    )
    page_file = tmp_path / "broken.html"
    page_file.write_text(html, encoding="utf-8")

    page = load(chromium, tmp_path, page_file)

    assert page.dom.attrs("html").get("data-errors") == "1"
    assert any("Uncaught ReferenceError: undefinedFunction" in line for line in page.console), page.stderr
    with pytest.raises(AssertionError):
        page.assert_clean()


def test_screenshot(chromium: str, tmp_path: Path) -> None:
    events = incident_trace()
    use = next(e for e in events if isinstance(e, AgentToolUse) and e.name == "sql")
    url = write_page(tmp_path, events).as_uri() + f"#span=tool-{quote(use.tool_use_id)}"
    shot = tmp_path / "timeline.png"

    _, err = run_chromium(
        chromium, tmp_path / "profile", f"--screenshot={shot}", "--window-size=1400,900", url
    )

    assert [m["message"] for m in CONSOLE.finditer(err)] == []
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert shot.stat().st_size > 10_000
    target = os.environ.get("STAFFWORK_SCREENSHOT_DIR")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shot = Path(shutil.copy(shot, Path(target) / "timeline.png"))
    print(f"timeline screenshot: {shot}")
