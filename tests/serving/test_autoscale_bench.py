"""`semgen bench autoscale`'s arithmetic on a made-up trace: replicas per phase, calls per replica, the time Serve
took to change the replica count. (The bench itself needs minutes of a two-node cluster: run by hand.)"""

from serving.bench.autoscale import summarize


def test_phases_report_throughput_per_replica_and_when_the_count_changed():
    start = 100.0
    # readings every second: 1 replica, 2 from 4 s into the busy phase, 1 again 6 s into the quiet one
    trace = [(start + t, 1.0) for t in range(-2, 14)] + [(start + t, 2.0) for t in range(14, 26)] + \
            [(start + t, 1.0) for t in range(26, 30)]
    calls = [(start + 0.5 + k * 0.5, "OK") for k in range(19)] + [(start + 10 + k * 0.1, "OK") for k in range(100)] + \
            [(start + 25, "UNAVAILABLE")]
    result = summarize((1, 16, 1), 10.0, start, trace, calls)
    quiet, busy, after = result["phases"]
    assert (quiet["replicas_from"], quiet["replicas_to"], quiet["changed_after_s"]) == (1.0, 1.0, None)
    assert (busy["replicas_from"], busy["replicas_to"], busy["changed_after_s"]) == (1.0, 2.0, 4.0)
    assert (after["replicas_from"], after["replicas_to"], after["changed_after_s"]) == (2.0, 1.0, 6.0)
    assert busy["mean_replicas"] == 1.6 and busy["calls_per_s"] == 10.0 and busy["calls_per_s_per_replica"] == 6.25
    assert busy["by_replicas"] == {"1": 10.0, "2": 10.0} and quiet["by_replicas"] == {"1": 1.89}
    assert quiet["calls_per_s"] == 1.9 and quiet["errors"] == {} and after["errors"] == {"UNAVAILABLE": 1}
    assert result["replicas_over_time_s"] == [[-2.0, 1.0], [14.0, 2.0], [26.0, 1.0], [29.0, 1.0]]
