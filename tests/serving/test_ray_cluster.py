"""Starting a local Ray: a start whose node misses Ray's registration window is tried once more."""

import pytest

from serving.ray import cluster


def _fake_ray(monkeypatch, failures: list[Exception]):
    calls = []

    def init(**kwargs):
        calls.append("init")
        if failures:
            raise failures.pop(0)

    monkeypatch.setattr(cluster.ray, "init", init)
    monkeypatch.setattr(cluster.ray, "shutdown", lambda: calls.append("shutdown"))
    return calls


def test_a_start_that_timed_out_is_tried_again_from_a_clean_state(monkeypatch):
    calls = _fake_ray(monkeypatch, [Exception("The current node timed out during startup. ...")])
    cluster.start_local_ray(2)
    assert calls == ["init", "shutdown", "init"]


def test_other_failures_and_the_last_timeout_are_raised(monkeypatch):
    calls = _fake_ray(monkeypatch, [ValueError("num_cpus: bad")])
    with pytest.raises(ValueError, match="num_cpus"):
        cluster.start_local_ray(2)
    assert calls == ["init", "shutdown"]
    timeout = "The current node timed out during startup."
    calls = _fake_ray(monkeypatch, [Exception(timeout), Exception(timeout)])
    with pytest.raises(Exception, match="timed out during startup"):
        cluster.start_local_ray(2)
    assert calls == ["init", "shutdown", "init", "shutdown"]
