"""Data for build-log triage: a week of CI builds from three CI systems, mostly noise, and the few
failures worth acting on.

Three sources, each with its own log format and its own services:

    jenkins     the Python backend (payments, accounts): console text, pytest
    github      the web app (web): GitHub Actions logs, each line stamped, ##[error] markers; tsc, jest
    buildkite   the Go services (search, indexer): lines stamped [time], go test

Files::

    builds.csv                      build_id, source, pipeline, branch, sha, started_at,
                                    duration_s, result (passed, failed)
    builds/<source>/<build_id>.log  one log per build (every build, passed or failed)

Most failed builds are noise: flaky tests (each fails a few percent of its pipeline's builds, on any
branch and commit), timeouts, dependency downloads that fail (a registry down for a while), and
infrastructure (a full disk, a lost runner, a registry rate limit). Three are real regressions: from
one commit on ``main``, every later ``main`` build of one pipeline fails the same way. No file says
which; :func:`generate` returns it (:class:`GroundTruth`). The same seed gives byte-identical files::

    python -m examples.builds.generate DIR [--seed 7] [--truth]
"""

from __future__ import annotations

import csv
import io
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from examples import generator_main

START = datetime(2026, 11, 23, 0, 0, tzinfo=UTC)
DAYS = 7
BUILDS = 640
INDEX = "builds.csv"
SOURCES = ("jenkins", "github", "buildkite")
PREFIX = {"jenkins": "jk", "github": "gh", "buildkite": "bk"}
PIPELINES = {"jenkins": ("payments", "accounts"), "github": ("web",), "buildkite": ("search", "indexer")}


@dataclass(frozen=True)
class Regression:
    """A real regression: from ``first_bad_commit`` on, every ``main`` build of ``pipeline`` fails with
    ``signature`` (the line the triage names it by)."""

    source: str
    pipeline: str
    signature: str
    first_bad_commit: str
    first_failed_build: str
    failed_builds: int


@dataclass(frozen=True)
class GroundTruth:
    """What the week's failures really are."""

    regressions: list[Regression]
    #: the flaky tests' signatures, each with how many builds it failed
    flaky: dict[str, int]
    #: failed builds per noise category (flaky, timeout, dependency, infrastructure)
    noise: dict[str, int]
    failed_builds: int
    builds: int


@dataclass(frozen=True)
class _Cause:
    category: str  # test, build, flaky, timeout, dependency, infrastructure
    signature: str
    lines: tuple[str, ...]  # what the log shows at the failure (without the source's stamps)


# What each pipeline runs, and how its failures look. A regression's signature is what a triage
# extracts from its first failure line: a test's id, or a compiler error without its position.
_REGRESSIONS = {
    "payments": _Cause(
        "test",
        "tests/test_refunds.py::test_partial_refund_rounding",
        (
            "FAILED tests/test_refunds.py::test_partial_refund_rounding - AssertionError: "
            "assert Decimal('10.01') == Decimal('10.00')",
        ),
    ),
    "web": _Cause(
        "build",
        "error TS2322: Type 'string' is not assignable to type 'number'.",
        (
            "src/cart/CartTotal.tsx(42,7): error TS2322: Type 'string' is not assignable to type 'number'.",
            "Found 1 error in src/cart/CartTotal.tsx:42",
        ),
    ),
    "indexer": _Cause(
        "test",
        "--- FAIL: TestBulkReindexKeepsAliases",
        (
            "--- FAIL: TestBulkReindexKeepsAliases (2.84s)",
            "    reindex_test.go:118: alias products-live points to products-v11, want products-v12",
        ),
    ),
}
_FLAKY = {
    "payments": (
        "tests/test_webhooks.py::test_delivery_retries_with_backoff",
        "AssertionError: retry 3 came after {s}s, expected < 2.0s",
    ),
    "accounts": (
        "tests/test_sessions.py::test_concurrent_login_refresh",
        "sqlalchemy.exc.OperationalError: database is locked",
    ),
    "web": (
        "Checkout \u203a submits the order after a network retry",  # jest's separator
        'thrown: "Exceeded timeout of 5000 ms for a test."',
    ),
    "search": ("--- FAIL: TestLeaderElectionFailover", "election_test.go:77: no leader after {s}s"),
    "indexer": ("--- FAIL: TestQueueDrainOnShutdown", "queue_test.go:52: 3 messages left after drain"),
}


def _flaky(pipeline: str, rng: random.Random) -> _Cause:
    name, detail = _FLAKY[pipeline]
    detail = detail.format(s=f"{rng.uniform(2.1, 9.5):.2f}")
    if name.startswith("--- FAIL"):
        return _Cause("flaky", name, (f"{name} ({rng.uniform(1, 9):.2f}s)", f"    {detail}"))
    if name.startswith("tests/"):
        return _Cause("flaky", name, (f"FAILED {name} - {detail}",))
    return _Cause("flaky", f"● {name}", (f"  ● {name}", "", f"    {detail}"))


_TIMEOUT = {
    "jenkins": "Build timed out (after 60 minutes). Marking the build as aborted.",
    "github": (
        "##[error]The job running on runner gh-runner-{n} has exceeded the maximum execution time of 60 "
        "minutes."
    ),
    "buildkite": "Timeout: the job ran longer than its 60m timeout_in_minutes and was canceled",
}
_DEPENDENCY = {
    "jenkins": (
        "ERROR: Could not install packages due to an OSError: "
        "HTTPSConnectionPool(host='pypi.internal', port=443): Max retries exceeded with url: /simple/{pkg}/",
    ),
    "github": (
        "npm ERR! code ECONNRESET",
        "npm ERR! network request to https://registry.npmjs.org/{pkg} failed, reason: socket hang up",
    ),
    "buildkite": (
        "go: downloading {pkg} v1.{n}.0",
        'go: {pkg}@v1.{n}.0: Get "https://proxy.golang.org/{pkg}/@v/v1.{n}.0.zip": dial tcp: i/o timeout',
    ),
}
_PACKAGES = {
    "jenkins": ("requests", "sqlalchemy", "pydantic"),
    "github": ("react-dom", "vite", "zod"),
    "buildkite": ("github.com/nats-io/nats.go", "golang.org/x/sync"),
}
_INFRA = (
    "No space left on device: write /var/lib/docker/overlay2/{h}/diff/tmp/build.tar",
    "The runner has received a shutdown signal. This can happen when the runner service is stopped, "
    "or a manually started runner is canceled.",
    "toomanyrequests: You have reached your pull rate limit. "
    "You may increase the limit by authenticating and upgrading",
)


@dataclass
class _Build:
    build_id: str
    source: str
    pipeline: str
    branch: str
    commit: str
    started_at: datetime
    duration_s: int
    cause: _Cause | None = None
    log: list[str] = field(default_factory=list)


def _stamp(source: str, at: datetime, line: str) -> str:
    """A log line as the source writes it: GitHub stamps each line, Buildkite in brackets."""
    if source == "github":
        return f"{at.strftime('%Y-%m-%dT%H:%M:%S.')}{at.microsecond:06d}0Z {line}"
    if source == "buildkite":
        return f"[{at.strftime('%Y-%m-%dT%H:%M:%SZ')}] {line}"
    return line


def _steps(build: _Build, rng: random.Random) -> list[str]:
    """The build's ordinary output up to where it fails (or all of it, if it passes)."""
    commit = build.commit
    if build.source == "jenkins":
        lines = [
            f"Started by GitHub push by {rng.choice(['ana', 'ben', 'chen', 'dara'])}",
            f"Checking out Revision {commit} (origin/{build.branch})",
            "[Pipeline] stage (Install)",
            "+ pip install -r requirements.txt",
            *(f"Collecting {p}" for p in _PACKAGES["jenkins"]),
            "[Pipeline] stage (Test)",
            f"+ pytest -q tests/ --junitxml=reports/{build.pipeline}.xml",
            *(
                f"tests/test_{m}.py {'.' * rng.randint(8, 30)}"
                for m in ("api", "models", "refunds", "webhooks", "sessions")
            ),
        ]
        end = [f"{rng.randint(180, 420)} passed in {rng.uniform(40, 160):.2f}s", "Finished: SUCCESS"]
    elif build.source == "github":
        lines = [
            "##[group]Run actions/checkout@v4",
            f"HEAD is now at {commit[:7]} {rng.choice(['fix', 'feat', 'chore'])}: "
            f"{rng.choice(['cart', 'checkout', 'search box', 'deps'])}",
            "##[endgroup]",
            "##[group]Run npm ci",
            f"added {rng.randint(900, 1400)} packages in {rng.randint(12, 40)}s",
            "##[endgroup]",
            "##[group]Run npx tsc --noEmit",
            "##[endgroup]",
            "##[group]Run npx jest --ci",
            *(f"PASS src/{m}.test.tsx" for m in ("cart/Cart", "checkout/Checkout", "search/Search")),
        ]
        end = [f"Tests:       {rng.randint(300, 480)} passed", "##[endgroup]"]
    else:
        lines = [
            "~~~ Preparing working directory",
            f"$ git checkout -f {commit}",
            "~~~ :go: Downloading modules",
            "$ go mod download",
            f"~~~ :test_tube: go test ./{build.pipeline}/...",
            *(
                f"ok  \tacme/{build.pipeline}/{m}\t{rng.uniform(0.2, 6):.3f}s"
                for m in ("api", "store", "queue")
            ),
        ]
        end = [f"ok  \tacme/{build.pipeline}/reindex\t{rng.uniform(1, 5):.3f}s", "~~~ Uploading artifacts"]
    if build.cause and build.cause.category == "build":  # the compiler stops it before the tests
        lines = lines[: lines.index("##[group]Run npx tsc --noEmit") + 1]
    return lines + ([] if build.cause else end)


def _failure(build: _Build, rng: random.Random) -> list[str]:
    cause = build.cause
    assert cause is not None
    tail = {
        "jenkins": "Finished: FAILURE",
        "github": "##[error]Process completed with exit code 1.",
        "buildkite": "🚨 Error: The command exited with status 1",
    }
    lines = list(cause.lines)
    if cause.category in ("test", "flaky") and build.source == "jenkins":
        lines.append(f"1 failed, {rng.randint(180, 420)} passed in {rng.uniform(40, 160):.2f}s")
    if build.source == "github" and cause.category in ("test", "build", "flaky"):
        lines = [f"##[error]{lines[0].strip()}", *lines[1:]]
    return [*lines, tail[build.source]]


def _plan(rng: random.Random) -> tuple[list[_Build], GroundTruth]:
    """The week's builds in time order, each with its cause of failure (None: it passed)."""
    builds: list[_Build] = []
    counters = {s: rng.randint(1000, 4000) for s in SOURCES}
    broken: dict[str, datetime] = {  # when each regression lands on main
        "payments": START + timedelta(days=5, hours=10, minutes=12),
        "web": START + timedelta(days=5, hours=15, minutes=40),
        "indexer": START + timedelta(days=6, hours=3, minutes=5),
    }
    first_bad: dict[str, tuple[str, str]] = {}  # pipeline -> (commit, build)
    dependency_outage = (START + timedelta(days=2, hours=11), START + timedelta(days=2, hours=16))
    times = sorted(START + timedelta(seconds=rng.randint(0, DAYS * 86400 - 1)) for _ in range(BUILDS))
    for at in times:
        source = rng.choice(SOURCES)
        pipeline = rng.choice(PIPELINES[source])
        counters[source] += 1
        branch = "main" if rng.random() < 0.6 else f"pr-{rng.randint(1200, 1900)}"
        build = _Build(
            build_id=f"{PREFIX[source]}-{counters[source]:05d}",
            source=source,
            pipeline=pipeline,
            branch=branch,
            commit=f"{rng.getrandbits(160):040x}",
            started_at=at,
            duration_s=rng.randint(180, 1500),
        )
        roll = rng.random()
        regression = _REGRESSIONS.get(pipeline)
        if regression and branch == "main" and at >= broken[pipeline]:
            build.cause = regression
            first_bad.setdefault(pipeline, (build.commit, build.build_id))
        elif dependency_outage[0] <= at <= dependency_outage[1] and roll < 0.7:
            pkg = rng.choice(_PACKAGES[source])
            lines = tuple(line.format(pkg=pkg, n=rng.randint(2, 30)) for line in _DEPENDENCY[source])
            build.cause = _Cause("dependency", "", lines)
        elif roll < 0.09:
            build.cause = _flaky(pipeline, rng)
        elif roll < 0.13:
            build.cause = _Cause("timeout", "", (_TIMEOUT[source].format(n=rng.randint(1, 40)),))
            build.duration_s = 3600
        elif roll < 0.17:
            build.cause = _Cause(
                "infrastructure", "", (rng.choice(_INFRA).format(h=f"{rng.getrandbits(64):016x}"),)
            )
        builds.append(build)
    failed = [b for b in builds if b.cause]
    regressions = [
        Regression(
            source=next(s for s, ps in PIPELINES.items() if pipeline in ps),
            pipeline=pipeline,
            signature=cause.signature,
            first_bad_commit=first_bad[pipeline][0],
            first_failed_build=first_bad[pipeline][1],
            failed_builds=sum(1 for b in failed if b.cause is cause),
        )
        for pipeline, cause in _REGRESSIONS.items()
    ]
    flaky: dict[str, int] = {}
    noise: dict[str, int] = {}
    for b in failed:
        assert b.cause is not None
        if b.cause.category == "flaky":
            flaky[b.cause.signature] = flaky.get(b.cause.signature, 0) + 1
        if b.cause.category not in ("test", "build"):
            noise[b.cause.category] = noise.get(b.cause.category, 0) + 1
    truth = GroundTruth(
        regressions, dict(sorted(flaky.items())), dict(sorted(noise.items())), len(failed), len(builds)
    )
    return builds, truth


def generate(folder: Path, *, seed: int = 7) -> GroundTruth:
    """Write the week's index and logs into ``folder``; return what is really wrong."""
    rng = random.Random(seed)
    builds, truth = _plan(rng)
    index = io.StringIO()
    writer = csv.writer(index, lineterminator="\n")
    writer.writerow(["build_id", "source", "pipeline", "branch", "sha", "started_at", "duration_s", "result"])
    for build in builds:
        lines = _steps(build, rng)
        if build.cause:
            lines += _failure(build, rng)
        step = timedelta(seconds=build.duration_s / max(len(lines), 1))
        build.log = [_stamp(build.source, build.started_at + step * n, line) for n, line in enumerate(lines)]
        writer.writerow(
            [
                build.build_id,
                build.source,
                build.pipeline,
                build.branch,
                build.commit,
                build.started_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
                build.duration_s,
                "failed" if build.cause else "passed",
            ]
        )
    folder.mkdir(parents=True, exist_ok=True)
    (folder / INDEX).write_text(index.getvalue())
    for build in builds:
        path = folder / "builds" / build.source / f"{build.build_id}.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(build.log) + "\n")
    return truth


def files(folder: Path) -> list[str]:
    """The data's files, as paths relative to ``folder`` (the index first)."""
    logs = sorted(str(p.relative_to(folder)) for p in (folder / "builds").rglob("*.log"))
    return [INDEX, *logs]


def main(argv: list[str] | None = None) -> None:
    generator_main("builds", __doc__, generate, argv)


if __name__ == "__main__":
    main()
