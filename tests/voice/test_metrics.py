"""The Prometheus text rendering of the server's metrics."""

from voice.metrics import Metrics


def test_render_has_counters_gauges_and_histograms() -> None:
    """Every metric renders with HELP, TYPE and cumulative histogram buckets."""
    m = Metrics()
    m.active_calls.inc()
    m.bad_frames.inc(3, "malformed_json")
    m.turn_latency.observe(0.4, "total")
    m.turn_latency.observe(2.5, "total")
    text = m.render()
    assert "# TYPE voxdial_active_calls gauge\nvoxdial_active_calls 1\n" in text
    assert 'voxdial_bad_frames_total{kind="malformed_json"} 3' in text
    assert 'voxdial_turn_latency_seconds_bucket{stage="total",le="0.5"} 1' in text
    assert 'voxdial_turn_latency_seconds_bucket{stage="total",le="+Inf"} 2' in text
    assert 'voxdial_turn_latency_seconds_count{stage="total"} 2' in text
