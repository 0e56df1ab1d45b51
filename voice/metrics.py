"""Process metrics in the Prometheus text exposition format (version 0.0.4).

A deliberately small registry: counters, gauges and histograms with fixed
label names. Updating a metric is a dict lookup and an addition, cheap enough
for the 20 ms path; rendering happens only when `/metrics` is scraped.
"""

from __future__ import annotations

import asyncio
import bisect
import math
from collections.abc import Iterable, Sequence


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


class _Metric:
    kind = ""

    def __init__(self, name: str, help_text: str, labels: Sequence[str] = ()) -> None:
        self.name = name
        self.help = help_text
        self.label_names = tuple(labels)

    def samples(self) -> Iterable[str]:
        raise NotImplementedError

    def render(self) -> str:
        head = f"# HELP {self.name} {self.help}\n# TYPE {self.name} {self.kind}\n"
        return head + "".join(line + "\n" for line in self.samples())


class Counter(_Metric):
    """A monotonically increasing count, optionally split by labels."""

    kind = "counter"

    def __init__(self, name: str, help_text: str, labels: Sequence[str] = ()) -> None:
        super().__init__(name, help_text, labels)
        self._values: dict[tuple[str, ...], float] = {}
        if not labels:
            self._values[()] = 0.0

    def inc(self, amount: float = 1.0, *labels: str) -> None:
        self._values[labels] = self._values.get(labels, 0.0) + amount

    def value(self, *labels: str) -> float:
        return self._values.get(labels, 0.0)

    def samples(self) -> Iterable[str]:
        for key, value in sorted(self._values.items()):
            yield f"{self.name}{_labels(self.label_names, key)} {_number(value)}"


class Gauge(Counter):
    """A value that goes up and down."""

    kind = "gauge"

    def dec(self, amount: float = 1.0, *labels: str) -> None:
        self.inc(-amount, *labels)

    def set(self, value: float, *labels: str) -> None:
        self._values[labels] = value


class Histogram(_Metric):
    """Observations counted into cumulative buckets (upper bounds in seconds)."""

    kind = "histogram"

    def __init__(
        self,
        name: str,
        help_text: str,
        buckets: Sequence[float],
        labels: Sequence[str] = (),
    ) -> None:
        super().__init__(name, help_text, labels)
        self.buckets = tuple(sorted(buckets))
        self._counts: dict[tuple[str, ...], list[int]] = {}
        self._sums: dict[tuple[str, ...], float] = {}

    def observe(self, value: float, *labels: str) -> None:
        counts = self._counts.get(labels)
        if counts is None:
            counts = self._counts[labels] = [0] * (len(self.buckets) + 1)
            self._sums[labels] = 0.0
        counts[bisect.bisect_left(self.buckets, value)] += 1
        self._sums[labels] += value

    def count(self, *labels: str) -> int:
        return sum(self._counts.get(labels, ()))

    def samples(self) -> Iterable[str]:
        for key, counts in sorted(self._counts.items()):
            running = 0
            for bound, n in zip((*self.buckets, math.inf), counts, strict=True):
                running += n
                le = f'le="{_number(bound)}"'
                labels = _labels(self.label_names, key, le)
                yield f"{self.name}_bucket{labels} {running}"
            yield f"{self.name}_sum{_labels(self.label_names, key)} {self._sums[key]!r}"
            yield f"{self.name}_count{_labels(self.label_names, key)} {running}"


_LATENCY_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)


class Metrics:
    """Every metric the media server exports."""

    def __init__(self) -> None:
        self.active_calls = Gauge("voxdial_active_calls", "Calls with an open stream.")
        self.calls_total = Counter(
            "voxdial_calls_total", "Calls whose stream has ended.", ["end_reason"]
        )
        self.frames_in = Counter("voxdial_frames_in_total", "Media frames received.")
        self.frames_out = Counter("voxdial_frames_out_total", "Media frames sent.")
        self.late_frames_out = Counter(
            "voxdial_late_frames_out_total",
            "Outbound frames sent after the caller's playback had already run dry.",
        )
        self.barge_ins = Counter(
            "voxdial_barge_ins_total", "Times the caller spoke over the agent."
        )
        self.bad_frames = Counter(
            "voxdial_bad_frames_total", "Malformed or unexpected frames.", ["kind"]
        )
        self.errors = Counter("voxdial_errors_total", "Errors by kind.", ["kind"])
        self.turn_latency = Histogram(
            "voxdial_turn_latency_seconds",
            "End of caller speech to first agent audio sent, and its stages.",
            _LATENCY_BUCKETS,
            ["stage"],
        )
        self.barge_in_latency = Histogram(
            "voxdial_barge_in_seconds",
            "Onset of caller speech over the agent to `clear` sent.",
            _LATENCY_BUCKETS,
        )
        self.messages = Counter(
            "voxdial_whatsapp_messages_total",
            "WhatsApp messages received and sent.",
            ["direction"],
        )
        self.conversations_total = Counter(
            "voxdial_whatsapp_conversations_total",
            "WhatsApp conversations that have ended.",
            ["end_reason"],
        )
        self.loop_lag = Histogram(
            "voxdial_event_loop_lag_seconds",
            "How late a 50 ms timer of the event loop fired.",
            (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0),
        )
        self.loop_lag_max = Gauge(
            "voxdial_event_loop_lag_max_seconds", "The worst event-loop lag seen."
        )

    def render(self) -> str:
        metrics: list[_Metric] = [
            self.active_calls,
            self.calls_total,
            self.frames_in,
            self.frames_out,
            self.late_frames_out,
            self.barge_ins,
            self.bad_frames,
            self.errors,
            self.turn_latency,
            self.barge_in_latency,
            self.messages,
            self.conversations_total,
            self.loop_lag,
            self.loop_lag_max,
        ]
        return "".join(m.render() for m in metrics)


async def watch_loop_lag(metrics: Metrics, period_s: float = 0.05) -> None:
    """Run forever, timing how late each `period_s` sleep wakes up.

    Lag is what every frame of every call waits on top of its own work: a
    model run on the loop, a long JSON dump or GC pause all show up here.
    """
    loop = asyncio.get_running_loop()
    while True:
        started = loop.time()
        await asyncio.sleep(period_s)
        lag = max(0.0, loop.time() - started - period_s)
        metrics.loop_lag.observe(lag)
        if lag > metrics.loop_lag_max.value():
            metrics.loop_lag_max.set(lag)
