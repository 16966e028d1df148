"""The supervisor for real: `whisperd run` forking workers, real signals, a fake NOTIFY_SOCKET."""

from __future__ import annotations

import os
import shutil
import signal
import time

import psutil
from conftest import submit, wait_for

from devkit.clips import FIXTURE_MODEL, JFK
from devkit.daemon import title_of


def test_notify_protocol_titles_and_no_torch_in_the_supervisor(broker, daemon_factory):
    d = daemon_factory(workers={"count": 2}).start(env={"WATCHDOG_USEC": "1000000"})
    assert d.titles() == ["whisperd: worker 1 [idle]", "whisperd: worker 2 [idle]"]
    sup = psutil.Process(d.pid)
    assert title_of(sup) == "whisperd: supervisor [2 workers]"
    maps = open(f"/proc/{d.pid}/maps").read()
    assert "libtorch" not in maps and "libcuda" not in maps
    assert sup.memory_info().rss < 60 * 2**20
    threads = max(1, len(os.sched_getaffinity(0)) // 2)
    assert d.log().count(f"loaded by openai-whisper on cpu with {threads} threads") == 2
    submit(broker, d, JFK.path, "n1")
    broker.completions(1, 60)
    wait_for(lambda: any(s.startswith("0/2 busy, 1 done") for s in d.notify.statuses()), 10, "STATUS with 1 done")
    assert "broker ok" in d.notify.statuses()[-1]
    wait_for(lambda: d.notify.count("WATCHDOG=1") >= 2, 10, "two watchdog pings")

    d.signal(signal.SIGHUP)
    wait_for(lambda: d.notify.count("READY=1") == 2, 30, "READY after the reload")
    lines = d.notify.lines()
    reloading = lines.index("RELOADING=1")
    assert lines[reloading + 1].startswith("MONOTONIC_USEC=")
    assert abs(int(lines[reloading + 1].split("=")[1]) - time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000) < 60e6
    assert lines.index("READY=1", reloading) > reloading

    d.signal(signal.SIGTERM)
    assert d.wait_exit(30) == 0
    assert "STOPPING=1" in d.notify.lines()
    senders = d.notify.senders()
    assert senders == {d.pid}, f"notifications from {senders}, supervisor is {d.pid}"


def test_kill_9_of_a_busy_worker_replaces_it_and_the_job_completes_once(broker, daemon_factory, slow_job):
    d = daemon_factory(model=slow_job.section, workers={"count": 1}).start()
    submit(broker, d, slow_job.audio, "killed-job")
    victim = d.busy_worker()
    victim.send_signal(signal.SIGKILL)
    wait_for(lambda: [w.pid for w in d.workers()] not in ([], [victim.pid]), 30, "a replacement worker")
    [c] = broker.completions(1, 120)
    assert (c["task_id"], c["status"]) == ("killed-job", "done")
    assert c["worker"].split(":")[2] != str(victim.pid)
    assert "killed by SIGKILL" in d.log() and "which goes back to the queue" in d.log()
    assert broker.get(broker.result_queue, 3) is None


def test_reload_scales_2_to_4_to_1_without_losing_jobs(broker, daemon_factory):
    d = daemon_factory(workers={"count": 2}).start()
    for i in range(6):
        submit(broker, d, JFK.path, f"scale-a{i}")
    d.configure(workers={"count": 4})
    d.signal(signal.SIGHUP)
    wait_for(lambda: len(d.workers()) == 4, 60, "4 workers")
    d.wait_ready(count=2)
    wait_for(lambda: d.titles() == [f"whisperd: worker {i} [idle]" for i in (1, 2, 3, 4)], 30, "4 idle workers")
    for i in range(6):
        submit(broker, d, JFK.path, f"scale-b{i}")
    d.configure(workers={"count": 1})
    d.signal(signal.SIGHUP)
    wait_for(lambda: len(d.workers()) == 1, 60, "1 worker")
    for i in range(3):
        submit(broker, d, JFK.path, f"scale-c{i}")
    got = broker.completions(15, 120)
    assert sorted(c["task_id"] for c in got) == sorted(
        [f"scale-a{i}" for i in range(6)] + [f"scale-b{i}" for i in range(6)] + [f"scale-c{i}" for i in range(3)]
    )
    assert all(c["status"] == "done" for c in got)
    assert broker.get(broker.result_queue, 2) is None
    assert "scaled down" in d.log()


def test_reload_with_a_new_thread_count_tells_the_running_worker_without_replacing_it(broker, daemon_factory):
    d = daemon_factory(workers={"count": 1, "threads": 1}).start()
    [before] = d.workers()
    d.configure(workers={"threads": 2})
    d.signal(signal.SIGHUP)
    wait_for(lambda: "worker 1: now using 2 threads" in d.log(), 30, "the new count in the worker")
    d.wait_ready(count=2)
    assert [w.pid for w in d.workers()] == [before.pid]
    assert "replacing workers" not in d.log()
    submit(broker, d, JFK.path, "two-threads")
    [c] = broker.completions(1, 60)
    assert (c["task_id"], c["status"]) == ("two-threads", "done")


def test_sigterm_during_a_job_drains_it_and_exits_0(broker, daemon_factory, slow_job):
    d = daemon_factory(model=slow_job.section, workers={"count": 1, "drain_timeout": 120.0}).start()
    submit(broker, d, slow_job.audio, "drain-me")
    d.busy_worker()
    d.signal(signal.SIGTERM)
    assert d.wait_exit(120) == 0
    [c] = broker.completions(1, 5)
    assert (c["task_id"], c["status"]) == ("drain-me", "done")
    wait_for(lambda: broker.depth(broker.job_queue) == (0, 0), 20, "the job acked (queue stats lag a few seconds)")
    assert "EXTEND_TIMEOUT_USEC=125000000" in "\n".join(d.notify.lines())


def test_memory_limit_recycles_a_worker_after_its_job(broker, daemon_factory, slow_job):
    d = daemon_factory(model=slow_job.section, workers={"count": 1}).start()
    submit(broker, d, slow_job.audio, "big")
    first = d.busy_worker()
    d.configure(workers={"max_rss_mb": 50})
    d.signal(signal.SIGHUP)
    wait_for(lambda: "recycling it after its job" in d.log(), 30, "the recycle decision")
    assert first.is_running()
    [c] = broker.completions(1, 120)
    assert (c["task_id"], c["status"]) == ("big", "done")
    wait_for(lambda: not first.is_running() or first.status() == psutil.STATUS_ZOMBIE, 30, "the old worker to exit")
    wait_for(lambda: any(w.pid != first.pid for w in d.workers()), 30, "a fresh worker")


def test_worker_without_heartbeat_is_killed_and_replaced(broker, daemon_factory):
    d = daemon_factory(workers={"count": 1, "timeout": 3.0}).start()
    [stuck] = d.workers()
    stuck.suspend()
    wait_for(lambda: "no heartbeat" in d.log(), 30, "the heartbeat timeout")
    wait_for(lambda: [w.pid for w in d.workers()] not in ([], [stuck.pid]), 60, "a replacement worker")
    submit(broker, d, JFK.path, "after-hang")
    [c] = broker.completions(1, 60)
    assert c["status"] == "done"


def test_unloadable_model_stops_after_bounded_attempts(broker, daemon_factory, tmp_path):
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    d = daemon_factory(model={"name": str(broken)}, workers={"count": 2, "boot_attempts": 3})
    d.start(wait_ready=False)
    assert d.wait_exit(120) == 1
    log = d.log()
    assert "giving up: worker" in log and "failed to start 3 times in a row" in log
    assert f"cannot load model {str(broken)!r}" in log
    assert log.count("failed to start (") <= 6
    assert any(s.startswith("failed: ") for s in d.notify.statuses())


def test_missing_model_file_stops_the_start_before_any_worker(broker, daemon_factory):
    d = daemon_factory(model={"name": "/nonexistent/model.pt"})
    d.start(wait_ready=False)
    assert d.wait_exit(60) == 2
    assert "model.name: /nonexistent/model.pt does not exist" in d.log() and "worker" not in d.log()


def test_reload_rolls_workers_on_model_change_and_keeps_running_on_a_bad_config(broker, daemon_factory, tmp_path):
    d = daemon_factory(workers={"count": 2}).start()
    before = {w.pid for w in d.workers()}
    d.config_path.write_text(d.config_path.read_text() + "\n[workers]\nbogus = 1\n")
    d.signal(signal.SIGHUP)
    wait_for(lambda: "reload failed, keeping the running configuration" in d.log(), 30, "the refused reload")
    assert {w.pid for w in d.workers()} == before
    d.configure(broker={"url": "amqp//whisper:S3cr3t-pw@rabbit:5672"})  # malformed: no "://"
    d.signal(signal.SIGHUP)
    wait_for(lambda: d.log().count("reload failed") == 2, 30, "the second refused reload")
    assert "S3cr3t-pw" not in d.log() and "whisper:***@rabbit" in d.log()
    d.configure(broker={"url": broker.url})
    copy = tmp_path / "copy-of-fixture.pt"
    shutil.copyfile(FIXTURE_MODEL, copy)
    d.configure(model={"name": str(copy)})
    d.signal(signal.SIGHUP)
    ready_seen = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and d.log().count("replaced after reload; it finishes") < 2:
        ready_seen.append(sum(1 for t in d.titles() if "[idle]" in t or "[busy" in t))
        time.sleep(0.1)
    d.wait_ready(count=3)
    assert d.log().count("replaced after reload; it finishes") == 2
    assert min(ready_seen) >= 1, "capacity dropped to zero during the rolling reload"
    wait_for(lambda: len(d.workers()) == 2, 30, "the last old worker to exit")
    after = {w.pid for w in d.workers()}
    assert not after & before
    submit(broker, d, JFK.path, "after-roll")
    [c] = broker.completions(1, 60)
    assert c["status"] == "done"


def test_sigquit_stops_at_once_and_the_job_in_flight_goes_back_to_the_queue(broker, daemon_factory, slow_job):
    d = daemon_factory(model=slow_job.section, workers={"count": 1, "drain_timeout": 600.0}).start()
    submit(broker, d, slow_job.audio, "quit-me")
    [worker] = [d.busy_worker()]
    d.signal(signal.SIGQUIT)
    assert d.wait_exit(15) == 0
    assert not worker.is_running() or worker.status() == psutil.STATUS_ZOMBIE
    assert "fast stop: 1 workers, 1 busy" in d.log()
    assert broker.get(broker.result_queue, 1) is None, "a fast stop must not finish the job"
    wait_for(lambda: broker.depth(broker.job_queue) == (1, 0), 20, "the job back in the queue, unacked")
    d.start()
    [c] = broker.completions(1, 120)
    assert (c["task_id"], c["status"]) == ("quit-me", "done")
    assert broker.get(broker.result_queue, 2) is None


def test_auto_runs_one_single_threaded_worker_per_core(broker, daemon_factory):
    from whisperd import layout

    cores = layout.cpu_cores()
    d = daemon_factory(workers={"count": "auto"}).start()
    wait_for(lambda: len(d.workers()) == cores, 60, f"{cores} workers")
    assert f"{cores} workers (auto: one per core ({cores}))" in d.log()
    assert "1 threads per worker" in d.log()
    for i in range(cores):
        submit(broker, d, JFK.path, f"auto-{i}")
    got = broker.completions(cores, 120)
    assert sorted(c["task_id"] for c in got) == [f"auto-{i}" for i in range(cores)]
    assert all(c["status"] == "done" for c in got)


def test_a_max_jobs_recycle_and_an_operators_sigterm_to_a_worker_are_told_apart(broker, daemon_factory):
    """Both exit cleanly; the exit code says which (lifecycle.WorkerExit), and so do the log and metrics."""
    from test_metrics import scrape

    from devkit.daemon import free_port

    port = free_port()
    d = daemon_factory(metrics={"listen": f"127.0.0.1:{port}"}, workers={"count": 1, "max_jobs": 2}).start()
    [first] = d.workers()
    for n in range(2):
        submit(broker, d, JFK.path, f"recycle-{n}")
    broker.completions(2, 120)
    wait_for(lambda: [w.pid for w in d.workers()] not in ([], [first.pid]), 60, "a fresh worker after max_jobs")
    wait_for(lambda: "recycling after 2 jobs" in d.log(), 10, "the recycle in the log")

    [second] = wait_for(lambda: (ws := d.workers()) and ws[0].pid != first.pid and ws, 30, "the second worker")
    second.send_signal(signal.SIGTERM)  # an operator's `kill <worker>`, not the supervisor's
    wait_for(lambda: [w.pid for w in d.workers()] not in ([], [second.pid]), 60, "a worker after the SIGTERM")
    restarts = lambda: {  # noqa: E731
        labels[0][1]: v for (name, labels), v in scrape(port).items() if name == "whisperd_worker_restarts_total"
    }
    wait_for(lambda: restarts() == {"recycled_max_jobs": 1, "signalled": 1}, 20, "both restarts in the metrics")
    assert "exit code 0" in d.log() and "exit code 5" in d.log()
    submit(broker, d, JFK.path, "after-both")
    assert broker.completions(1, 60)[0]["status"] == "done"
