"""whisperd on a real three-node RabbitMQ cluster: node loss, a partitioned host, producers in fail-over.

The cluster is built here from the installed rabbitmq-server (tests/fixtures/rabbit_cluster.py:
own node names, ports, data directories and Erlang cookie, ``join_cluster``) and torn down at the
end of the module, whatever happened. The partitioned host is a network namespace of the test's
own (tests/fixtures/netns.py), also removed at the end. The last line printed sums up the jobs,
the faults, the repeated work by cause and the time to recover; WHISPERD_CLUSTER_JOBS changes
the job count of the node-loss test (default 300).
"""

from __future__ import annotations

import collections
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import netns
import psutil
import pytest
import requests
from conftest import REPO, BrokerClient, Daemon, queue_clips, wait_for, write_toml
from rabbit_cluster import RabbitCluster
from rabbit_node import RabbitNode
from test_chaos import drain_completions

from devkit.clips import CLIPS, JFK
from devkit.daemon import title_of
from whisperd import control

JOBS = int(os.environ.get("WHISPERD_CLUSTER_JOBS", "300"))
HEARTBEAT_S = 4  # short heartbeats, so the broker gives up on a cut-off host within seconds
FIGURES: dict[str, Any] = {}


def say(request: pytest.FixtureRequest, text: str) -> None:
    """Print past pytest's capture, so CI logs show the figures of a passing run too."""
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        print(text, flush=True)


def closing_line() -> str:
    """jobs, kills, repeats by cause and time to recover, over the tests that ran to the end."""
    loss, cut, prod, classic = (FIGURES.get(k) for k in ("node_loss", "partition", "producers", "classic"))
    jobs, kills, repeats, recover = [], [], [], []
    if loss:
        jobs.append(f"{loss['jobs']} over 2 daemons")
        kills += ["kill -9 of the job-queue leader", "stop/start of a follower"]
        repeats += [f"{cause}: {counts}" for cause, counts in loss["repeats"].items()] or ["node loss: none"]
        recover += [f"{loss['recover_kill']:.1f} s after the kill -9", f"{loss['recover_stop']:.1f} s after the stop"]
    if cut:
        jobs.append(f"{1 + cut['after']} on a partitioned host")
        kills.append(f"link cut for {cut['cut_s']:.0f} s")
        repeats.append("partition: 1 transcribed again (late copy kept the stored result), 0 completions sent twice")
        recover += [f"job requeued {cut['requeued_s']:.1f} s after the cut", f"host back {cut['rejoined_s']:.1f} s "
                    "after the link"]  # fmt: skip
    if prod:
        jobs.append(f"{prod['submitted'] + prod['api']} queued by whisperd submit and the API")
        kills.append(f"{prod['kills']} kill -9 under the producers")
        repeats.append(f"producers' kill -9: {prod['republished']} published twice, 0 lost")
        recover.append(f"publishing stalled {prod['stall_s']:.1f} s at most")
    if classic:
        jobs.append("2 with a classic result queue")
        kills.append("kill -9 of its node")
    if not jobs:
        return "\ncluster: no test ran to the end"
    return (
        f"\ncluster: jobs {' + '.join(jobs)}; kills: {', '.join(kills)}; repeats by cause: {'; '.join(repeats)}; "
        f"time to recover: {', '.join(recover)}"
    )


@pytest.fixture(scope="module")
def cluster(request: pytest.FixtureRequest) -> Any:
    why = RabbitNode.unavailable()
    if why:
        pytest.skip(f"SKIPPED LOUDLY: cluster tests need private RabbitMQ nodes: {why}")
    nodes = RabbitCluster()
    try:
        yield nodes.start()
    finally:
        nodes.shutdown()
        say(request, closing_line())


@pytest.fixture
def queues(cluster: RabbitCluster) -> Any:
    """A test client on the queues of this test, through a node that is up."""
    client = BrokerClient(f"cl-{uuid.uuid4().hex[:8]}", cluster.running()[0].url)
    yield client
    cluster.heal()
    try:
        client.url = cluster.running()[0].url
        client.connect()
        client.close()
    except Exception:  # the cluster is torn down with the module anyway
        pass


def cluster_url(port: int, host: str = "127.0.0.1") -> str:
    return f"amqp://guest:guest@{host}:{port}/%2F"


def shared_storage(tmp_path: Path) -> dict[str, str]:
    """media_root and results_dir shared by the daemons, as NFS would be by two hosts."""
    shared = {"media_root": str(tmp_path / "shared" / "media"), "results_dir": str(tmp_path / "shared" / "results")}
    Path(shared["media_root"]).mkdir(parents=True)
    return shared


def node_of(proc: psutil.Process, cluster: RabbitCluster) -> list[RabbitNode]:
    """The nodes a process has AMQP connections to (by the ports it is connected to)."""
    by_port = {n.port: n for n in cluster.nodes}
    try:
        conns = proc.net_connections("tcp")
    except psutil.Error:
        return []
    return [by_port[c.raddr.port] for c in conns if c.raddr and c.raddr.port in by_port and c.status == "ESTABLISHED"]


class StatusWatch:
    """Polls each daemon's control socket (what ``whisperd status`` reads) a few times a second."""

    def __init__(self, daemons: list[Daemon]) -> None:
        self.daemons = daemons
        self.seen: list[tuple[float, str, dict[str, Any]]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            for d in self.daemons:
                try:
                    self.seen.append((time.monotonic(), d.root.name, control.query([str(d.root / "control.sock")], 2)))
                except Exception:  # a daemon busy for a moment: the next poll will do
                    pass
            self.stop.wait(0.2)

    def workers_since(self, t: float) -> list[tuple[float, str, dict[str, Any]]]:
        return [(at, name, w) for at, name, s in list(self.seen) if at >= t for w in s["workers"]]

    def recovered(self, t: float, stable_s: float = 2.0) -> float | None:
        """When, after ``t``, every worker of every daemon was back for good (serving, broker ok): the
        first all-ok poll after the last one that was not, once that has held for ``stable_s``."""
        latest: dict[str, dict[str, Any]] = {}
        since = None
        for at, name, s in [x for x in list(self.seen) if x[0] >= t]:
            latest[name] = s
            ok = len(latest) == len(self.daemons) and all(
                w["broker"] == "ok" and w["state"] in ("idle", "busy") for st in latest.values() for w in st["workers"]
            )
            since = (since or at) if ok else None
        return since if since is not None and time.monotonic() - since >= stable_s else None


def log_events(logs: list[str], pattern: str) -> list[tuple[float, re.Match]]:
    """(wall time, match) of each log line matching ``pattern``, in time order (lines start with asctime)."""
    out = []
    for text in logs:
        for line in text.splitlines():
            m = re.search(pattern, line)
            if m:
                out.append((datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp(), m))
    return sorted(out, key=lambda e: e[0])


def repeats_by_cause(logs: list[str], completions: dict[str, list[dict]], faults: list[tuple[str, float]]) -> dict:
    """Work done again, by the fault it followed: transcribed again, answered from disk, completions sent twice."""
    done = log_events(logs, r"task (\S+): (?:done,|transcribed again)")
    from_disk = log_events(logs, r"task (\S+): already done, answering")

    def cause(at: float) -> str:
        before = [name for name, t in faults if t <= at]
        return before[-1] if before else "no fault"

    counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    seen: set[str] = set()
    for at, m in done:
        if m.group(1) in seen:
            counts[cause(at)]["transcribed again"] += 1
        seen.add(m.group(1))
    for at, m in from_disk:
        counts[cause(at)]["answered from disk"] += 1
        if len(completions.get(m.group(1), [])) > 1:
            counts[cause(at)]["completion sent twice"] += 1
    return {name: dict(c) for name, c in counts.items()}


def worker_states(d: Any) -> list[tuple[str, str]]:
    return [(w["state"], w["broker"]) for w in control.query([str(d.root / "control.sock")])["workers"]]


def test_node_loss_kill_9_of_the_leader_then_a_follower_restart(cluster, queues, daemon_factory, tmp_path, request):
    shared = shared_storage(tmp_path)
    settings = {
        "broker": {"url": cluster.urls[0], "urls": cluster.urls, "max_attempts": 5},
        "workers": {"count": 2},
        "storage": shared,
    }
    hosts = [daemon_factory(name, on=queues, **settings) for name in ("host-a", "host-b")]
    for d in hosts:
        d.start()
    wait_for(lambda: all("broker ok" in (d.notify.statuses() or [""])[-1] for d in hosts), 60, "both daemons connected")
    # The workers declared the queues (leader: the node of the first one, the other two follow).
    q = cluster.queues()
    for name in (queues.job_queue, queues.result_queue, queues.dead_queue):
        assert q[name]["type"] == "quorum", (name, q[name])
        assert len(cluster.members_of(name)) == 3, f"{name} must have a replica on each node: {q[name]}"

    expected = queue_clips(queues, shared["media_root"], "nl", JOBS)
    results = Path(shared["results_dir"])
    progress = lambda: sum(1 for _ in results.glob("nl-*.txt"))  # noqa: E731
    watch = StatusWatch(hosts)
    started = time.monotonic()
    try:
        # 1. kill -9 of the Erlang VM of the node leading the job queue.
        wait_for(lambda: progress() >= JOBS // 5, 60 + JOBS, f"{JOBS // 5} jobs done", interval=0.2)
        leader = cluster.leader_of(queues.job_queue)
        workers = [w for d in hosts for w in d.workers()]
        on_leader = [w for w in workers if leader in node_of(w, cluster)]
        assert on_leader, "precondition: the leader is the node of the worker that declared the queue"
        kill_at, t_kill, wall_kill = progress(), time.monotonic(), time.time()
        leader.kill()
        wait_for(lambda: progress() >= kill_at + 4, 120, "jobs done after the kill -9", interval=0.1)
        flowing_kill = time.monotonic() - t_kill
        wait_for(lambda: watch.recovered(t_kill), 120, "every worker back after the kill -9", interval=0.2)
        new_leader = cluster.leader_of(queues.job_queue)
        assert new_leader is not leader
        lost = [(at, n, w) for at, n, w in watch.workers_since(t_kill) if w["broker"] == "unreachable"]
        seen = sorted({(w["state"], w["broker"]) for _, _, w in watch.workers_since(t_kill)})
        assert any(w["state"] == "connecting" for _, _, w in lost), f"whisperd status never showed the outage: {seen}"
        leader.start()  # the killed node comes back and rejoins with its data
        wait_for(lambda: len(cluster.members_of(queues.job_queue)) == 3, 60, "the replica back", interval=1)

        # 2. A follower (not the leader) stopped cleanly and started again: the one most workers use.
        wait_for(lambda: progress() >= JOBS * 3 // 5, 60 + JOBS, f"{JOBS * 3 // 5} jobs done", interval=0.2)
        leader_now, workers = cluster.leader_of(queues.job_queue), [w for d in hosts for w in d.workers()]
        followers = [n for n in cluster.nodes if n is not leader_now]
        follower = max(followers, key=lambda n: sum(n in node_of(w, cluster) for w in workers))
        stop_at, t_stop, wall_stop = progress(), time.monotonic(), time.time()
        follower.stop()
        wait_for(lambda: progress() >= stop_at + 4, 120, "jobs done with a node stopped", interval=0.1)
        follower.start()
        wait_for(lambda: watch.recovered(t_stop), 120, "every worker back after the stop", interval=0.2)

        wait_for(lambda: progress() == JOBS, 60 + JOBS * 2, f"{JOBS} result files", interval=0.5)
        wait_for(lambda: cluster.queues()[queues.job_queue]["messages"] == "0", 120, "every job acked", interval=1)
    finally:
        watch.stop.set()
        watch.thread.join()
    elapsed = time.monotonic() - started

    got = drain_completions(cluster.running()[0].url, queues.result_queue, quiet_s=5)
    by_task: dict[str, list[dict]] = collections.defaultdict(list)
    for c in got:
        by_task[c["task_id"]].append(c)
    assert set(by_task) == set(expected), f"missing: {sorted(set(expected) - set(by_task))[:10]}"
    for task_id, cs in by_task.items():
        assert all(c["status"] == "done" for c in cs), (task_id, cs)
        assert all(c == cs[0] for c in cs), f"{task_id} was completed differently twice: {cs}"
        assert cs[0]["text"] == expected[task_id].reference, (task_id, cs[0]["text"])
    assert not [p.name for p in results.rglob("*.tmp")], "partial files left behind"
    for task_id, clip in expected.items():
        assert (results / f"{task_id}.txt").read_text().strip() == clip.reference
        json.loads((results / f"{task_id}.json").read_text())

    logs = [d.log() for d in hosts]
    faults = [("kill -9 leader", wall_kill), ("stop follower", wall_stop)]
    repeats = repeats_by_cause(logs, by_task, faults)
    assert "no fault" not in repeats, f"work repeated without a fault to explain it: {repeats}"
    # No worker stuck: all serving, none reconnecting, nothing left in flight, both daemons up.
    for d in hosts:
        assert d.proc.poll() is None, f"{d.root.name} exited:\n{d.log()[-2000:]}"
        # Reports come every second; a job settled by a lost connection's fallback must leave its worker idle too.
        wait_for(lambda d=d: worker_states(d) == [("idle", "ok")] * 2, 15, f"{d.root.name}: both workers idle")
        text = subprocess.run(
            [sys.executable, "-m", "whisperd", "status", "--config", str(d.config_path)],
            capture_output=True, text=True, check=True, cwd=REPO,
        ).stdout  # fmt: skip
        assert "broker: ok" in text, text
    statuses = [(t, line) for d in hosts for t, _, line in d.notify.entries if line.startswith("STATUS=")]
    outage = [line for t, line in statuses if t > t_kill and ("unreachable" in line or "reconnecting" in line)]
    assert outage, "STATUS never showed the outage"
    assert all(re.search(r"broker ok$", d.notify.statuses()[-1]) for d in hosts), "STATUS must end with broker ok"
    # Time to recover: until the last worker that lost its node said it was back (from the logs).
    restored = [t for t, _ in log_events(logs, r"broker connection restored")]
    back_kill = [t - wall_kill for t in restored if wall_kill <= t < wall_stop]
    back_stop = [t - wall_stop for t in restored if t >= wall_stop]
    assert len(back_kill) >= len(on_leader), "each worker of the killed node must say it is back"
    recover_kill, recover_stop = max([flowing_kill, *back_kill]), max([0.0, *back_stop])
    FIGURES["node_loss"] = {
        "jobs": JOBS, "kill_at": kill_at, "stop_at": stop_at, "repeats": repeats,
        "recover_kill": recover_kill, "recover_stop": recover_stop,
    }  # fmt: skip
    say(
        request,
        f"\nnode loss: {JOBS} jobs, 2 daemons x 2 workers, 3 nodes, {elapsed:.0f} s; kill -9 of leader "
        f"{leader.name} at {kill_at} done ({len(on_leader)} workers on it): jobs flowing again after "
        f"{flowing_kill:.1f} s, every worker back after {recover_kill:.1f} s; stop/start of {follower.name} at "
        f"{stop_at} done ({len(back_stop)} workers on it): every worker back after {recover_stop:.1f} s; "
        f"{len(got)} completions for "
        f"{len(by_task)} tasks; repeats by cause: {repeats}; STATUS during the outage: {outage[0][7:]!r}",
    )


def test_a_host_cut_off_mid_job_is_replaced_and_rejoins(cluster, queues, daemon_factory, tmp_path, slow_job,
                                                        request):  # fmt: skip
    why = netns.unavailable()
    if why:
        pytest.skip(f"SKIPPED LOUDLY: the partition test needs network namespaces: {why}")
    shared = shared_storage(tmp_path)
    shutil.copyfile(slow_job.audio, Path(shared["media_root"]) / "long.wav")
    host = netns.IsolatedHost().create()
    try:
        relayed = [cluster_url(n.port, netns.GATEWAY_ADDR) for n in cluster.nodes]
        for n in cluster.nodes:
            host.relay(n.port)
        broker = {"heartbeat": HEARTBEAT_S}
        # workers.timeout: the supervisor would replace the worker this test freezes (see below).
        cut_off = daemon_factory(
            "cut-off", on=queues, model=slow_job.section, broker={**broker, "url": relayed[0], "urls": relayed},
            workers={"count": 1, "timeout": 600.0}, storage=shared,
        )  # fmt: skip
        cut_off.launcher = host.launcher
        cut_off.start()
        other = daemon_factory(
            "other", on=queues, model=slow_job.section, broker={**broker, "urls": cluster.urls}, storage=shared
        )
        queues.publish({"task_id": "cut-long", "audio_path": "long.wav"})
        [worker] = cut_off.workers()
        wait_for(lambda: title_of(worker).endswith("[busy cut-long]"), 60, "the cut-off host on the long job")

        # Cut off mid-job, and frozen too (as a paused VM would be) until the other host has published
        # the job: the cut-off host's own result comes last, the order in which it could replace the
        # published one.
        worker.suspend()
        t_cut = time.monotonic()
        host.cut()
        ready = lambda: queues.ch.queue_declare(queues.job_queue, passive=True).method.message_count  # noqa: E731
        wait_for(lambda: ready() == 1, 120, "the broker requeuing the job", interval=0.2)
        requeued_s = time.monotonic() - t_cut
        other.start()
        [taker] = other.workers()
        [c] = queues.completions(1, 300)
        assert (c["task_id"], c["status"]) == ("cut-long", "done")
        assert c["worker"].endswith(f":{taker.pid}"), c
        # Running again but still cut off: at each try it says why it cannot get back (no route).
        worker.resume()
        wait_for(lambda: "still cannot get back to the broker" in cut_off.log(), 120, "a retry logged while cut off")
        cut_s = time.monotonic() - t_cut
        t_back = time.monotonic()
        host.restore()
        wait_for(lambda: "broker connection restored" in cut_off.log(), 120, "the cut-off host reconnected")
        rejoined_s = time.monotonic() - t_back
        # Its own copy of the job ends late (cut off or after reconnecting): that must change nothing.
        wait_for(lambda: "task cut-long:" in cut_off.log(), 300, "the cut-off host done with its copy of the job")
        log = cut_off.log()
        assert "broker unreachable:" in log and "no route to host" in log, log[-3000:]
        assert "task cut-long: transcribed again, but another worker stored it first; keeping that result" in log
        queues.connect()  # this test's own connection had no heartbeats while the test waited
        assert queues.get(queues.result_queue, 5) is None, "a second completion for the job"
        results = Path(shared["results_dir"])
        stored = json.loads((results / ".whisperd" / "cut-long.completion.json").read_text())["completion"]
        assert stored == c, "the stored result is not the one published"
        assert json.loads((results / "cut-long.json").read_text())["text"].strip() == c["text"]
        assert not [p.name for p in results.rglob("*.tmp")], "partial files left behind"
        assert other.log().count("task cut-long:") == 1 and "broker unreachable" not in other.log()

        # Rejoined: with the other host gone, it takes new jobs.
        other.stop()
        shutil.copyfile(JFK.path, Path(shared["media_root"]) / JFK.audio)
        for i in range(3):
            queues.publish({"task_id": f"after-cut-{i}", "audio_path": JFK.audio})
        after = queues.completions(3, 120)
        assert all(a["status"] == "done" and a["worker"].endswith(f":{worker.pid}") for a in after), after
        retries = re.findall(r"still cannot get back to the broker after .*", log)
        kept = re.search(r"task cut-long: .*", log).group(0)
    finally:
        host.remove()
    FIGURES["partition"] = {"cut_s": cut_s, "requeued_s": requeued_s, "rejoined_s": rejoined_s, "after": len(after)}
    say(
        request,
        f"\npartition: heartbeat {HEARTBEAT_S} s; job requeued to the other host {requeued_s:.1f} s after the cut and "
        f"completed once; link back after {cut_s:.0f} s, cut-off host reconnected {rejoined_s:.1f} s later; its own "
        f"late copy changed nothing ({kept!r}); {len(retries)} retries logged while cut off, e.g. "
        f"{retries[0][:220] if retries else '-'}; 3 new jobs taken after",
    )


def test_producers_keep_publishing_across_node_loss(cluster, queues, tmp_path, request):
    pytest.importorskip("fastapi")
    from test_api import Api

    media = tmp_path / "media"
    media.mkdir()
    config = tmp_path / "producers.toml"
    write_toml(
        config,
        {
            "broker": {"url": cluster.urls[0], "urls": cluster.urls, "job_queue": queues.job_queue,
                       "result_queue": queues.result_queue, "reconnect_max_s": 2.0},
            "storage": {"media_root": str(media), "results_dir": str(tmp_path / "results")},
            "api": {"state_dir": str(tmp_path / "api")},
        },
    )  # fmt: skip
    clip = CLIPS[2].path  # 63 kB: the copies are cheap
    api = Api(config, tmp_path / "api.log").start()
    api_proc = psutil.Process(api.proc.pid)
    listener_nodes = node_of(api_proc, cluster)
    posts: list[tuple[float, float, int, str]] = []
    stop_posting = threading.Event()

    def post_forever() -> None:
        while not stop_posting.is_set():
            t = time.monotonic()
            try:
                r = api.post(clip)
                posts.append((t, time.monotonic(), r.status_code, r.json().get("task_id", "")))
            except requests.RequestException as e:
                posts.append((t, time.monotonic(), 0, str(e)))
            time.sleep(0.05)

    def accepted_since(start: int, n: int, what: str) -> None:
        """Wait until ``n`` posts after the first ``start`` were accepted (202)."""
        wait_for(lambda: sum(1 for p in posts[start:] if p[2] == 202) >= n, 60, what)

    poster = threading.Thread(target=post_forever, daemon=True)
    poster.start()
    kills = 0
    try:
        wait_for(lambda: len(posts) >= 3, 60, "the API publishing")
        publisher_nodes = [n for n in node_of(api_proc, cluster) if n not in listener_nodes] or listener_nodes

        n_files = 400
        submit = subprocess.Popen(
            [sys.executable, "-m", "whisperd", "submit", "--config", str(config), *[str(clip)] * n_files],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
        )  # fmt: skip
        lines: list[tuple[float, str]] = []
        reader = threading.Thread(
            target=lambda: lines.extend((time.monotonic(), x) for x in submit.stdout), daemon=True
        )
        reader.start()
        sub_proc = psutil.Process(submit.pid)
        submit_node = wait_for(lambda: node_of(sub_proc, cluster), 30, "whisperd submit connected")[0]
        wait_for(lambda: len(lines) >= 20 or submit.poll() is not None, 60, "submit publishing")
        # Freeze it mid-stream, kill -9 its node, let it go on: its next confirm never comes.
        submit.send_signal(signal.SIGSTOP)
        assert submit.poll() is None, "submit ended before the node could be killed"
        submit_node.kill()
        kills += 1
        t_cont = time.monotonic()
        published_before = len(lines)
        submit.send_signal(signal.SIGCONT)
        assert submit.wait(240) == 0, submit.stderr.read()
        reader.join(10)
        stderr = submit.stderr.read()
        assert len(lines) == n_files, f"{len(lines)} of {n_files} queued:\n{stderr[-2000:]}"
        after_kill = [t for t, _ in lines[published_before:]]
        submit_stall = (after_kill[0] - t_cont) if after_kill else 0.0
        submit_node.start()

        if submit_node not in publisher_nodes:  # the API's publisher was elsewhere: its node goes too
            wait_for(lambda: len(cluster.running()) == 3, 60, "all nodes up again")
            victim = publisher_nodes[0]
            victim.kill()
            kills += 1
            accepted_since(len(posts), 5, "the API publishing with its node down")
            victim.start()
        accepted_since(len(posts), 5, "the API publishing after the nodes came back")
    finally:
        stop_posting.set()
        poster.join(60)
        api.stop()

    assert all(code == 202 for _, _, code, _ in posts), [p for p in posts if p[2] != 202][:5]
    api_ids = [task_id for _, _, _, task_id in posts]
    submit_ids = [line.split("\t")[0] for _, line in lines]
    queued = [job["task_id"] for job in drain_completions(cluster.running()[0].url, queues.job_queue, quiet_s=3)]
    missing = (set(api_ids) | set(submit_ids)) - set(queued)
    assert not missing, f"jobs confirmed to their producer but not in the queue: {sorted(missing)[:10]}"
    republished = len(queued) - len(set(queued))
    stall = max([submit_stall, *(end - start for start, end, _, _ in posts)])
    FIGURES["producers"] = {"submitted": len(submit_ids), "api": len(api_ids), "kills": kills,
                            "republished": republished, "stall_s": stall}  # fmt: skip
    say(
        request,
        f"\nproducers: whisperd submit queued {len(submit_ids)} jobs, the API {len(api_ids)}, across {kills} kill -9 "
        f"of the node they were connected to; none lost, {republished} published twice (confirm lost with the "
        f"node); submit went on {submit_stall:.1f} s after its node died, longest API request "
        f"{max(end - start for start, end, _, _ in posts):.1f} s; submit said: "
        f"{[x for x in stderr.splitlines() if 'trying again' in x][:1]}",
    )


def test_a_classic_result_queue_is_used_with_a_warning_and_its_lost_node_is_named_at_each_retry(
    cluster, queues, daemon_factory, request
):
    """A result queue made as a classic queue (by an older whisperd or a consumer): whisperd keeps
    using it and says how to migrate; when its node dies, every retry says that is why."""
    home = cluster.nodes[2]
    queues.url = home.url
    queues.connect()
    queues.ch.queue_declare(queues.result_queue, durable=True)  # classic, on its home node
    d = daemon_factory("legacy", on=queues, broker={"url": cluster.urls[0], "urls": cluster.urls})
    d.start()
    d.stage(JFK.path, JFK.audio)
    queues.publish({"task_id": "legacy-1", "audio_path": JFK.audio})
    [c] = queues.completions(1, 120)
    assert c["status"] == "done"
    assert f"result queue '{queues.result_queue}' is not a quorum queue" in d.log()
    assert f"rabbitmqctl delete_queue {queues.result_queue}" in d.log()

    home.kill()
    try:
        queues.url = cluster.running()[0].url
        queues.connect()
        queues.publish({"task_id": "legacy-2", "audio_path": JFK.audio})
        wait_for(lambda: d.log().count("cannot be used now") >= 2, 120, "two retries naming the lost queue")
        assert d.proc.poll() is None
    finally:
        home.start()
    wait_for(lambda: "broker connection restored" in d.log(), 120, "the worker back with the queue's node")
    queues.url = home.url
    queues.connect()
    # A classic queue may also hand back what was taken from it just before its node died (legacy-1).
    seen: list[dict] = []
    deadline = time.monotonic() + 120
    while not any(c["task_id"] == "legacy-2" for c in seen) and time.monotonic() < deadline:
        item = queues.get(queues.result_queue, 1)
        seen += [item[1]] if item else []
    assert [c["status"] for c in seen if c["task_id"] == "legacy-2"] == ["done"], seen
    retry = next(line for line in d.log().splitlines() if "cannot be used now" in line)
    FIGURES["classic"] = {"retries": d.log().count("cannot be used now")}
    say(request, f"\nclassic result queue, its node killed; the worker said at each retry: {retry[24:400]}")
