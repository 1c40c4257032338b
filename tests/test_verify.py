"""The alerts and metrics consumers re-match content signals (request path, User-Agent,
body magic) on what their events publish: the sensor's own content hits pass, a forged
one for a path or magic the pack does not know is refused."""

from __future__ import annotations

import dataclasses

import pytest

from kaspwatch.event import EventError
from sensor.pipeline import Sensor
from sensor.rules.allowlist import Allowlist
from sensor.rules.indicators import load_pack, shipped_pack_paths
from sensor.rules.match import Matcher
from sensor.rules.ruleset import Rules
from sensor.sources.pcapfile import CaptureFile
from sensor.verify import hit_verifier
from tests.testenv import SAMPLE


@pytest.fixture(scope="module")
def matcher() -> Matcher:
    return Matcher([load_pack(p) for p in shipped_pack_paths()])


def test_the_sensors_own_content_hits_pass_the_consumers_rematch(matcher: Matcher) -> None:
    sensor = Sensor(Rules(matcher, Allowlist()), "edge-1")
    with CaptureFile(str(SAMPLE)) as cap:
        events = [e for frame in cap for e in sensor.process_frame(*frame)]
    content = [e for e in events if e.kind in ("http_request", "file_magic")]
    assert content, "the sample holds a real /bases/ update download"
    verify = hit_verifier(lambda: matcher)
    for ev in content:
        checked = verify(ev)
        assert checked.indicator == ev.indicator
        assert "claimed_indicator" not in checked.extra


def test_a_forged_content_hit_is_refused(matcher: Matcher) -> None:
    sensor = Sensor(Rules(matcher, Allowlist()), "edge-1")
    with CaptureFile(str(SAMPLE)) as cap:
        events = [e for frame in cap for e in sensor.process_frame(*frame)]
    real = next(e for e in events if e.kind == "http_request")
    verify = hit_verifier(lambda: matcher)
    forged_path = dataclasses.replace(real, extra={**real.extra, "path": "/index.html"})
    with pytest.raises(EventError, match="does not match"):
        verify(forged_path)
    forged_magic = dataclasses.replace(
        real, kind="file_magic", extra={"magic": "GIF8", "path": "/logo.gif"}
    )
    with pytest.raises(EventError, match="does not match"):
        verify(forged_magic)
