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


@pytest.mark.parametrize("message", ["The current node timed out during startup. ...",
                                     "Timed out waiting for file /tmp/ray/session_x/gcs_server_port_0a1b"])
def test_a_start_that_timed_out_is_tried_again_from_a_clean_state(monkeypatch, message):
    calls = _fake_ray(monkeypatch, [RuntimeError(message)])
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


def test_a_cluster_without_the_gpus_asked_for_is_refused_by_flag(monkeypatch):
    calls = _fake_ray(monkeypatch, [])
    monkeypatch.setattr(cluster.ray, "is_initialized", lambda: False)
    monkeypatch.setattr(cluster.ray, "cluster_resources", lambda: {"CPU": 2.0})
    assert cluster.start_ray("10.0.0.5:6379", cpus=1.5) is False  # joined: not ours to stop
    with pytest.raises(ValueError, match=r"has 0 GPUs; what was asked for needs 1 .*--ray-replica-gpus\)"):
        cluster.start_ray("10.0.0.5:6379", cpus=1.0, gpus=1.0)
    assert calls == ["init", "init"]  # a cluster we joined is left as it is
    with pytest.raises(ValueError, match="GPUs"):
        cluster.start_ray("", gpus=0.5)  # a local Ray we started is stopped again
    assert calls[-2:] == ["init", "shutdown"]
    from serving.options import ServeOptions

    with pytest.raises(ValueError, match="--ray-replica-gpus >= 0"):
        ServeOptions(engine="ray", ray_replica_gpus=-1).check()


def test_a_batch_job_names_concurrency_when_the_cluster_is_too_small_and_says_when_it_waits(monkeypatch, capsys):
    from serving.batch import ray_data

    _fake_ray(monkeypatch, [])
    monkeypatch.setattr(cluster.ray, "is_initialized", lambda: False)
    monkeypatch.setattr(cluster.ray, "cluster_resources", lambda: {"CPU": 2.0})
    with pytest.raises(ValueError, match=r"has 2 CPUs; what was asked for needs 4 \(--concurrency: one CPU per Ray"):
        cluster.start_ray("10.0.0.5:6379", cpus=4, flags=ray_data.ACTOR_FLAGS)
    monkeypatch.setattr(ray_data.ray, "available_resources", lambda: {"CPU": 0.5})  # Serve replicas hold 1.5
    ray_data.say_if_waiting(2)
    assert "waiting for CPUs: 2 Ray Data actors need 2, the cluster has 0.5 free now" in capsys.readouterr().err
    monkeypatch.setattr(ray_data.ray, "available_resources", lambda: {"CPU": 2.0})
    ray_data.say_if_waiting(2)
    assert capsys.readouterr().err == ""
