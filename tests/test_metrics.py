"""The Prometheus endpoint of a real daemon, scraped over HTTP while it works."""

from __future__ import annotations

import os
import signal
import socket

import psutil
import requests
from conftest import wait_for
from prometheus_client.parser import text_string_to_metric_families

from devkit.clips import JFK
from devkit.daemon import free_port


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_jobs_durations_memory_depths_and_restarts(broker, daemon_factory):
    port = free_port()
    d = daemon_factory(metrics={"listen": f"127.0.0.1:{port}"}, workers={"timeout": 3.0}).start()
    d.stage(JFK.path, "jfk.flac")
    broker.publish({"task_id": "m-done", "audio_path": "jfk.flac"})
    broker.publish({"task_id": "m-missing", "audio_path": "nope.wav"})
    broker.publish(b"not json")
    broker.completions(2, 60)

    def jobs_counted() -> dict | None:
        m = scrape(port)
        done = m.get(("whisperd_jobs_total", (("code", ""), ("status", "done"))))
        return m if done == 1 and m.get(("whisperd_workers", (("state", "idle"),))) == 1 else None

    m = wait_for(jobs_counted, 20, "the done job in the metrics and the worker idle", interval=0.5)
    assert m[("whisperd_jobs_total", (("code", "file_not_found"), ("status", "failed")))] == 1
    assert m[("whisperd_jobs_total", (("code", "invalid_job"), ("status", "rejected")))] == 1
    assert m[("whisperd_job_duration_seconds_count", ())] == 1, "only the transcribed job is timed"
    assert m[("whisperd_job_duration_seconds_sum", ())] > 0
    assert m[("whisperd_job_real_time_factor_count", ())] == 1
    assert abs(m[("whisperd_audio_seconds_total", ())] - 11.0) < 0.1
    assert m[("whisperd_worker_rss_bytes", (("slot", "1"),))] > 50 * 2**20
    assert m[("whisperd_worker_diarizer_loaded", (("slot", "1"),))] == 0, "no job asked for it"
    assert m[("whisperd_workers", (("state", "busy"),))] == 0
    assert m[("whisperd_broker_connected", ())] == 1

    m = wait_for(
        lambda: (x := scrape(port)).get(("whisperd_dead_letter_depth", ())) == 1 and x, 20, "dead-letter depth 1"
    )
    assert m[("whisperd_queue_depth", ())] == 0

    # The worker must not hold the metrics port: only the supervisor listens on it.
    [worker] = d.workers()
    listeners = {c.pid for c in psutil.net_connections("tcp") if c.laddr and c.laddr.port == port and c.pid}
    assert listeners == {d.pid}

    os.kill(worker.pid, signal.SIGKILL)
    m = wait_for(
        lambda: (x := scrape(port)).get(("whisperd_worker_restarts_total", (("reason", "crashed"),))) == 1 and x,
        20,
        "a crash restart",
    )
    d.wait_ready()  # READY is sent once; the replacement shows as an idle worker instead
    new = wait_for(lambda: [w for w in d.workers() if w.pid != worker.pid], 60, "the replacement worker")[0]
    wait_for(lambda: scrape(port).get(("whisperd_workers", (("state", "idle"),))) == 1, 60, "the replacement idle")
    os.kill(new.pid, signal.SIGSTOP)  # stops reporting: killed after workers.timeout = 3 s
    m = wait_for(
        lambda: (
            (x := scrape(port)).get(("whisperd_worker_restarts_total", (("reason", "heartbeat_timeout"),))) == 1 and x
        ),
        30,
        "a heartbeat-timeout restart",
    )
    assert m[("whisperd_worker_restarts_total", (("reason", "crashed"),))] == 1
    assert m[("whisperd_jobs_total", (("code", ""), ("status", "done")))] == 1, "counters survive worker restarts"


def test_address_in_use_stops_the_start_with_the_reason(broker, daemon_factory):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        d = daemon_factory(metrics={"listen": f"127.0.0.1:{port}"}).start(wait_ready=False)
        assert d.wait_exit(30) == 1
    assert f"metrics.listen = '127.0.0.1:{port}': cannot listen" in d.log()
    assert not d.workers()
