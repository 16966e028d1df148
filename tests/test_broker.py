"""Broker-facing reliability through the real daemon: topology, ack timeouts, heartbeats during
long jobs, outages, and jobs that keep killing their worker (poison messages)."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time

import psutil
from conftest import submit, wait_for

from devkit.clips import JFK, LIBRISPEECH
from devkit.daemon import free_port, title_of
from whisperd import broker as broker_mod
from whisperd import config as config_mod

SHORT = LIBRISPEECH[1]  # 2 s of speech: well inside a 4 s time limit, even for tiny.en on a busy core


def rabbitmqctl(*args: str, node: str | None = None) -> list[list[str]]:
    cmd = ["rabbitmqctl", "-q", *(["-n", node] if node else []), *args, "--no-table-headers"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return [line.split("\t") for line in out.splitlines() if line.strip()]


def test_quorum_job_queue_dead_letters_and_consumer_ack_timeout(broker, daemon):
    rows = {r[0]: r for r in rabbitmqctl("list_queues", "name", "type", "durable", "arguments")}
    name, kind, durable, args = rows[broker.job_queue]
    assert (kind, durable) == ("quorum", "true")
    assert f"x-dead-letter-routing-key,{broker.dead_queue}" in args.replace('"', "").replace("{", "").replace("}", "")
    assert "x-delivery-limit" in args
    assert rows[broker.dead_queue][2] == "true" and rows[broker.result_queue][2] == "true"
    cfg = config_mod.parse(daemon.config)
    expected = broker_mod.consumer_timeout_ms(cfg)
    assert expected >= (300 + 10 * cfg.limits.max_duration_s) * 1000, "must cover the longest legal job"
    [consumer] = [r for r in rabbitmqctl("list_consumers", "queue_name", "arguments") if r[0] == broker.job_queue]
    assert f"x-consumer-timeout,{expected}" in consumer[1].replace('"', "").replace("{", "").replace("}", "")
    version = broker.conn._impl.server_properties["version"]
    if not broker_mod.supports_consumer_timeout(version):
        assert f"RabbitMQ {version} ignores per-consumer ack timeouts" in daemon.log()


def test_existing_classic_job_queue_is_explained_not_crash_looped(broker, daemon_factory):
    broker.ch.queue_declare(broker.job_queue, durable=True)  # what an older producer may have created
    d = daemon_factory(workers={"count": 1, "boot_attempts": 2})
    d.start(wait_ready=False)
    assert d.wait_exit(120) == 1
    log = d.log()
    assert f"queue '{broker.job_queue}' already exists with other arguments" in log
    assert f"rabbitmqctl delete_queue {broker.job_queue}" in log
    assert log.count("failed to start (exit code 3)") == 2, "respawned more than boot_attempts allows"
    assert "giving up: worker 1 failed to start 2 times in a row" in log


def amqp_connection_of(worker: psutil.Process) -> tuple[int, str]:
    """(local port, negotiated heartbeat) of a worker's broker connection, as the broker sees it."""
    ports = [c.laddr.port for c in worker.net_connections("tcp") if c.raddr and c.raddr.port == 5672]
    timeouts = {int(r[0]): r[1] for r in rabbitmqctl("list_connections", "peer_port", "timeout")}
    found = [(p, timeouts[p]) for p in ports if p in timeouts]
    return found[0] if len(found) == 1 else (0, "")


def test_a_transcription_longer_than_three_heartbeats_is_not_redelivered(broker, daemon_factory, slow_job):
    heartbeat = 2
    d = daemon_factory(model=slow_job.section, broker={"heartbeat": heartbeat}, workers={"threads": 1}).start()
    [worker] = d.workers()
    before = wait_for(lambda: amqp_connection_of(worker)[0] and amqp_connection_of(worker), 30, "the connection")
    assert before[1] == str(heartbeat), f"heartbeat not negotiated: {before}"
    submit(broker, d, slow_job.audio, "long-1")
    [c] = broker.completions(1, 180)
    assert (c["task_id"], c["status"]) == ("long-1", "done")
    assert c["processing_s"] > 3 * heartbeat, "precondition: the job must outlast three heartbeat intervals"
    assert broker.get(broker.result_queue, 3) is None
    log = d.log()
    assert "unreachable" not in log and "already done" not in log
    assert log.count("task long-1: done") == 1
    assert amqp_connection_of(worker) == before, "the worker's connection was replaced during the job"


def test_broker_restart_shows_unreachable_then_recovers_without_loss(private_broker, rabbit_node, daemon_factory,
                                                                     slow_job):  # fmt: skip
    d = daemon_factory(on=private_broker, model=slow_job.section, workers={"count": 2}).start()
    d.wait_ready()
    submit(private_broker, d, slow_job.audio, "during-outage")
    d.busy_worker()
    rabbit_node.stop_app()
    try:
        wait_for(lambda: "broker unreachable" in (d.notify.statuses() or [""])[-1], 30, "STATUS broker unreachable")
        # several reconnection attempts by each worker, the daemon up through them
        retrying = [f"worker {slot}: still cannot get back to the broker" for slot in (1, 2)]
        wait_for(lambda: all(d.log().count(r) >= 2 for r in retrying), 60, "two retries by each worker")
        assert d.proc.poll() is None and len(d.workers()) == 2
        assert d.log().count("broker unreachable:") == 2, "one warning per worker per outage"
    finally:
        rabbit_node.start_app()
    wait_for(lambda: d.log().count("broker connection restored") == 2, 60, "both workers reconnected")
    wait_for(lambda: "broker ok" in d.notify.statuses()[-1], 30, "STATUS broker ok")
    private_broker.connect()
    submit(private_broker, d, JFK.path, "after-outage")
    got = private_broker.completions(2, 180)
    assert {(c["task_id"], c["status"]) for c in got} == {("during-outage", "done"), ("after-outage", "done")}
    assert private_broker.get(private_broker.result_queue, 3) is None
    assert (d.results / "during-outage.txt").exists()


def _kill_when_busy_with(d, task_id: str, kills: list[int], stop: threading.Event, after_s: float) -> None:
    """Play a job that crashes its worker: SIGKILL whichever worker has been busy with it for after_s."""
    seen: dict[int, float] = {}
    while not stop.is_set():
        for w in d.workers():
            if title_of(w).endswith(f"[busy {task_id}]"):
                first = seen.setdefault(w.pid, time.monotonic())
                if time.monotonic() - first >= after_s:
                    w.send_signal(signal.SIGKILL)
                    kills.append(w.pid)
                    seen.pop(w.pid)
        time.sleep(0.05)


def test_a_job_that_kills_its_worker_is_dead_lettered_after_max_attempts(broker, daemon_factory, slow_job):
    d = daemon_factory(model=slow_job.section, workers={"count": 2}, broker={"max_attempts": 3}).start()
    kills: list[int] = []
    stop = threading.Event()
    killer = threading.Thread(target=_kill_when_busy_with, args=(d, "poison", kills, stop, 1.0), daemon=True)
    killer.start()
    try:
        submit(broker, d, slow_job.audio, "poison")
        for i in range(6):
            submit(broker, d, JFK.path, f"fine-{i}")
        got = {c["task_id"]: c for c in broker.completions(7, 240)}
    finally:
        stop.set()
        killer.join()
    assert len(kills) == 3, f"expected 3 crashes, got {len(kills)}"
    assert all(got[f"fine-{i}"]["status"] == "done" for i in range(6))
    poison = got["poison"]
    assert (poison["status"], poison["error"]["code"]) == ("failed", "attempts_exhausted")
    assert "3 times" in poison["error"]["message"]
    wait_for(lambda: broker.depth(broker.dead_queue)[0] == 1, 20, "the poison job in the dead-letter queue")
    _, _, body = broker.ch.basic_get(broker.dead_queue, auto_ack=True)
    assert json.loads(body)["task_id"] == "poison"
    assert broker.get(broker.result_queue, 2) is None
    wait_for(lambda: broker.depth(broker.job_queue) == (0, 0), 20, "an empty job queue")


def test_a_job_past_its_time_limit_is_killed_retried_then_failed(broker, daemon_factory, slow_job):
    d = daemon_factory(model=slow_job.section, workers={"count": 1}, broker={"max_attempts": 2},
                       limits={"job_timeout_s": 4.0}).start()  # fmt: skip
    submit(broker, d, slow_job.audio, "too-slow")
    submit(broker, d, SHORT.path, "quick")
    got = {c["task_id"]: c for c in broker.completions(2, 240)}
    assert (got["too-slow"]["status"], got["too-slow"]["error"]["code"]) == ("failed", "attempts_exhausted")
    assert got["quick"]["status"] == "done", json.dumps(got["quick"])
    assert d.log().count("task too-slow exceeded its time limit of 4 s; killing it") == 2
    wait_for(lambda: broker.depth(broker.dead_queue)[0] == 1, 20, "the slow job in the dead-letter queue")


def test_the_time_limit_runs_from_the_moment_a_job_is_taken_decoding_included(broker, daemon_factory, tmp_path):
    """Nearly 4 hours of audio (2.6 MB of FLAC, honest timestamps, inside limits.max_duration_s)
    takes seconds to decode. The decode has a wall-clock limit of its own inside the job's
    (limits.decode_timeout_s, at most 80 % of the job's limit before its length is known), so a
    decode that runs long fails the job with invalid_audio and the worker keeps its model: no
    kill, no processing event (it follows the decoding), and the next job is served at once."""
    long = tmp_path / "long.flac"
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-f", "lavfi", "-i", "anullsrc=r=16000:cl=mono",
                    "-t", "14000", "-c:a", "flac", str(long)], check=True)  # fmt: skip
    d = daemon_factory(workers={"count": 1}, broker={"max_attempts": 1}, events={"progress": True},
                       limits={"job_timeout_s": 30.0, "decode_timeout_s": 0.5}).start()  # fmt: skip
    [worker] = d.workers()
    submit(broker, d, long, "decodes-for-long")
    [c] = broker.completions(1, 120)  # the first message for the job: no processing event came before it
    assert (c["task_id"], c["status"], c["error"]["code"]) == ("decodes-for-long", "failed", "invalid_audio"), c
    assert "decoding took longer than" in c["error"]["message"], c
    assert "exceeded its time limit" not in d.log() and "decodes-for-long: done" not in d.log()
    assert [w.pid for w in d.workers()] == [worker.pid], "the decoder was stopped, not the worker"
    submit(broker, d, SHORT.path, "after-the-decode")
    got = broker.completions(2, 60)
    assert [(c["task_id"], c["status"]) for c in got] == [
        ("after-the-decode", "processing"),
        ("after-the-decode", "done"),
    ]


def test_workers_fail_over_to_the_cluster_node_that_answers(broker, daemon_factory):
    dead = f"amqp://guest:guest@127.0.0.1:{free_port()}/%2F"
    d = daemon_factory(broker={"url": dead, "urls": [broker.url]}, workers={"count": 2}).start()
    submit(broker, d, JFK.path, "via-other-node")
    [c] = broker.completions(1, 60)
    assert c["status"] == "done"
    wait_for(lambda: "broker ok" in d.notify.statuses()[-1], 20, "STATUS broker ok")


def test_reply_to_is_never_whisperds_own_queue_and_follows_the_allowlist():
    cfg = config_mod.parse({"broker": {"reply_to_prefixes": ["amq.gen-", "api."]}}).broker
    assert broker_mod.refuse_reply_to(cfg, "whisperd.jobs") and broker_mod.refuse_reply_to(cfg, "whisperd.jobs.dead")
    assert broker_mod.refuse_reply_to(cfg, "orders.incoming")
    assert (
        broker_mod.refuse_reply_to(cfg, "amq.gen-Xy1") is None and broker_mod.refuse_reply_to(cfg, "api.done") is None
    )
    anyone = config_mod.parse({}).broker
    assert broker_mod.refuse_reply_to(anyone, "orders.incoming") is None
    assert broker_mod.refuse_reply_to(anyone, "whisperd.jobs")


def test_a_least_privilege_producer_can_submit_and_get_its_reply_but_nothing_else(broker, daemon):
    """The README's producer user: write to the default exchange, configure and read only its reply queues."""
    import pika
    import pika.exceptions
    import pytest

    user, password = f"producer-{broker.job_queue[5:15]}", "producer-pw"
    subprocess.run(["rabbitmqctl", "-q", "add_user", user, password], check=True, capture_output=True)
    try:
        subprocess.run(
            ["rabbitmqctl", "-q", "set_permissions", "-p", "/", user, r"^amq\.gen-.*", r"^amq\.default$",
             r"^amq\.gen-.*"], check=True, capture_output=True,
        )  # fmt: skip
        conn = pika.BlockingConnection(pika.URLParameters(f"amqp://{user}:{password}@127.0.0.1:5672/%2F"))
        ch = conn.channel()
        ch.confirm_delivery()
        reply = ch.queue_declare("", exclusive=True).method.queue
        daemon.stage(JFK.path, "least.flac")
        body = json.dumps({"task_id": "least", "audio_path": "least.flac"}).encode()
        ch.basic_publish("", broker.job_queue, body, pika.BasicProperties(reply_to=reply, delivery_mode=2))
        got = None
        deadline = time.monotonic() + 60
        while got is None and time.monotonic() < deadline:
            method, _, raw = ch.basic_get(reply, auto_ack=True)
            got = json.loads(raw) if method else conn.sleep(0.2)
        assert got and (got["task_id"], got["status"], got["text"]) == ("least", "done", JFK.reference), got
        for forbidden in (
            lambda c: c.basic_get(broker.result_queue, auto_ack=True),  # other producers' completions
            lambda c: c.queue_delete(broker.job_queue),
            lambda c: c.queue_purge(broker.job_queue),
            lambda c: c.queue_declare(broker.job_queue, durable=True),
        ):
            c = conn.channel()
            with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
                forbidden(c)
            assert e.value.reply_code == 403
        conn.close()
        assert broker.depth(broker.job_queue) == (0, 0)
    finally:
        subprocess.run(["rabbitmqctl", "-q", "delete_user", user], check=False, capture_output=True)
