"""Shared rate limits (``auth.redis_url``): the Redis window itself, two proxy processes
sharing one key's limit, degraded mode while Redis is away, and no key material in Redis.

Needs Redis on 127.0.0.1:6379 (``HUSHGATE_TEST_REDIS`` overrides the URL). Each test works
under its own key prefix (unit tests) or its own key ids (proxy tests) and deletes only its
own keys.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from control.core import keys
from control.core.config import load_config
from control.core.errors import ConfigError
from proxy_addons.limits import RedisLink, RedisWindow

REDIS_URL = os.environ.get("HUSHGATE_TEST_REDIS", "redis://127.0.0.1:6379/0")
HUSHGATE = str(Path(sys.executable).with_name("hushgate"))
PASSWORD = "redis-pw-marker-7f3a9c"  # must never reach a log line or an error


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Captured(logging.Handler):
    """Every record the ``hushgate`` loggers emit while installed."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def outage_warnings(self) -> list[logging.LogRecord]:
        return [r for r in self.records
                if r.levelno == logging.WARNING and "shared rate limits" in r.getMessage()]


@pytest.fixture
def logs() -> Iterator[Captured]:
    handler = Captured()
    logger = logging.getLogger("hushgate")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


@pytest.fixture
def redis_client() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL, socket_timeout=5)
    try:
        client.ping()
    except redis.RedisError as exc:
        client.close()
        pytest.fail(f"Redis is not reachable ({type(exc).__name__}): start redis-server on "
                    "127.0.0.1:6379 or set HUSHGATE_TEST_REDIS")
    yield client
    client.close()


@pytest.fixture
def prefix(redis_client: redis.Redis) -> Iterator[str]:
    """A key prefix of this test's own; its keys are deleted afterwards."""
    name = f"hushgate-test:{uuid.uuid4().hex[:12]}"
    yield name
    mine = list(redis_client.scan_iter(match=f"{name}:*", count=1000))
    if mine:
        redis_client.delete(*mine)


@pytest.fixture
def make_link() -> Iterator[Callable[..., RedisLink]]:
    links: list[RedisLink] = []

    def _make(url: str = REDIS_URL, **kw: Any) -> RedisLink:
        links.append(RedisLink(url, **kw))
        return links[-1]

    yield _make
    for link in links:
        link.close()


class Relay:
    """A TCP relay to the test Redis that can be cut (an outage) and restored."""

    def __init__(self, target: str) -> None:
        parts = redis.connection.parse_url(target)
        self.target = (parts.get("host", "127.0.0.1"), parts.get("port", 6379))
        self.up = True
        self.refused = 0
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(0.05)
        self.port = self.server.getsockname()[1]
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()
        self._stop = False
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _accept(self) -> None:
        while not self._stop:
            try:
                client, _ = self.server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            if not self.up:
                self.refused += 1
                client.close()
                continue
            upstream = socket.create_connection(self.target)
            with self._lock:
                self._open += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                t = threading.Thread(target=self._pipe, args=(src, dst), daemon=True)
                self._threads.append(t)
                t.start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        with suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with suppress(OSError):
            dst.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        self.up = False
        with self._lock:
            conns, self._open = self._open, []
        for s in conns:
            with suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def restore(self) -> None:
        self.up = True

    def close(self) -> None:
        self.cut()
        self._stop = True
        for t in self._threads:
            t.join(5)
        self.server.close()


# -- the window --------------------------------------------------------------------------


def test_redis_window_enforces_the_limit_with_retry_after(make_link, prefix, redis_client):
    w = RedisWindow(make_link(), "rpm", prefix=prefix)
    assert [w.try_acquire("k1", 3) for _ in range(3)] == [None, None, None]
    wait = w.try_acquire("k1", 3)
    assert wait is not None and 50 <= wait <= 60  # the oldest event leaves in ~60 s
    assert w.try_acquire("k2", 3) is None  # other keys have their own window
    events, total = w.keys("k1")
    assert redis_client.zcard(events) == 3 and int(redis_client.get(total)) == 3
    assert 0 < redis_client.pttl(events) <= 60_000 and 0 < redis_client.pttl(total) <= 60_000


def test_redis_window_counts_weights(make_link, prefix, redis_client):
    w = RedisWindow(make_link(), "tpm", prefix=prefix)
    assert w.try_acquire("k", 10, 6) is None
    assert w.try_acquire("k", 10, 5) is not None  # 6 + 5 > 10: refused, not counted
    assert w.try_acquire("k", 10, 4) is None      # 6 + 4 = 10 fits
    w.add("k", 3)                                  # actual tokens, after the fact
    w.add("k", 0)
    assert int(redis_client.get(w.keys("k")[1])) == 13
    assert w.try_acquire("k", 10, 1) is not None
    # One request heavier than the whole limit passes once, on an empty window.
    assert w.try_acquire("heavy", 10, 25) is None
    assert w.try_acquire("heavy", 10, 1) is not None


def test_redis_window_slides(make_link, prefix, redis_client):
    # A 2-second window, events 1 s apart: every check has ~0.8 s of slack on a busy machine.
    w = RedisWindow(make_link(), "rpm", window=2.0, prefix=prefix)
    start = time.monotonic()
    assert w.try_acquire("k", 2) is None                # A at ~0.0 s
    time.sleep(1.0)
    assert w.try_acquire("k", 2) is None                # B at ~1.0 s
    assert w.try_acquire("k", 2) in (1, 2)              # full; A leaves within 2 s
    time.sleep(max(0.0, start + 2.2 - time.monotonic()))
    assert w.try_acquire("k", 2) is None                # A has left, B has not
    assert w.try_acquire("k", 2) is not None
    time.sleep(max(0.0, start + 5.5 - time.monotonic()))
    assert redis_client.exists(*w.keys("k")) == 0       # idle keys vanish (PEXPIRE)


def test_a_window_holds_at_most_one_window_of_events(make_link, prefix, redis_client):
    w = RedisWindow(make_link(), "tpm", window=1.0, prefix=prefix)
    start = time.monotonic()
    for _ in range(20):
        assert w.try_acquire("k", 1000, 2) is None
    events, total = w.keys("k")
    assert redis_client.zcard(events) == 20 and int(redis_client.get(total)) == 40
    time.sleep(max(0.0, start + 1.2 - time.monotonic()))
    assert w.try_acquire("k", 1000, 7) is None
    assert redis_client.zcard(events) == 1 and int(redis_client.get(total)) == 7


def test_the_sum_is_rebuilt_if_redis_evicted_it(make_link, prefix, redis_client):
    w = RedisWindow(make_link(), "tpm", prefix=prefix)
    for weight in (3, 4):
        assert w.try_acquire("k", 10, weight) is None
    redis_client.delete(w.keys("k")[1])
    assert w.try_acquire("k", 10, 4) is not None  # 3 + 4 + 4 > 10
    assert w.try_acquire("k", 10, 3) is None


def test_two_processes_share_one_window_atomically(make_link, prefix):
    """Two links (as two proxy processes have) racing for one key: exactly the limit."""
    windows = [RedisWindow(make_link(), "rpm", prefix=prefix) for _ in range(2)]
    results: list[int | None] = []
    lock = threading.Lock()

    def hammer(w: RedisWindow) -> None:
        for _ in range(15):
            answer = w.try_acquire("shared", 10)
            with lock:
                results.append(answer)

    threads = [threading.Thread(target=hammer, args=(windows[i % 2],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(results) == 60 and results.count(None) == 10
    assert all(isinstance(r, int) and r >= 1 for r in results if r is not None)


# -- degraded mode -----------------------------------------------------------------------


def test_redis_down_falls_back_to_per_process_limits_with_one_warning(make_link, logs):
    dead = free_port()
    link = make_link(f"redis://:{PASSWORD}@127.0.0.1:{dead}/0", retry_seconds=30)
    assert link.check() is False
    rpm, tpm = RedisWindow(link, "rpm"), RedisWindow(link, "tpm")
    assert [rpm.try_acquire("k", 2) for _ in range(2)] == [None, None]
    assert rpm.try_acquire("k", 2) is not None  # still enforced, in this process
    assert tpm.try_acquire("k", 100, 60) is None
    tpm.add("k", 30)
    assert tpm.try_acquire("k", 100, 20) is not None
    warnings = logs.outage_warnings()
    assert len(warnings) == 1 and "ConnectionError" in warnings[0].getMessage()
    for record in logs.records:
        text = record.getMessage()
        assert PASSWORD not in text and str(dead) not in text and "redis://" not in text
        assert record.exc_info is None and record.exc_text is None


def test_an_outage_falls_back_then_redis_takes_over_again(make_link, prefix, redis_client,
                                                           logs):
    relay = Relay(REDIS_URL)
    try:
        link = make_link(relay.url(), retry_seconds=0.3)
        w = RedisWindow(link, "rpm", prefix=prefix)
        events = w.keys("k")[0]
        assert w.try_acquire("k", 5) is None
        assert redis_client.zcard(events) == 1
        relay.cut()
        answers = [w.try_acquire("k", 5) for _ in range(30)]
        # Enforced per process meanwhile (this process's last minute includes the first one).
        assert answers[:4] == [None] * 4 and all(a is not None for a in answers[4:])
        assert 1 <= relay.refused <= 2  # Redis probed at most once per retry interval, not per call
        assert len(logs.outage_warnings()) == 1
        relay.restore()
        time.sleep(0.4)
        assert w.try_acquire("k", 5) is None
        assert redis_client.zcard(events) == 2  # counted in Redis again
        assert not link.down
        relay.cut()  # a second outage: a second warning
        for _ in range(5):
            w.try_acquire("other", 5)
        assert len(logs.outage_warnings()) == 2
    finally:
        relay.close()


# -- configuration -----------------------------------------------------------------------


@pytest.mark.parametrize("url", ["http://127.0.0.1:6379", "redis://h:port", "rediss//h:6379",
                                 "127.0.0.1:6379"])
def test_a_bad_redis_url_names_the_key_and_hides_the_url(tmp_path, monkeypatch, url):
    monkeypatch.delenv("HUSHGATE_REDIS_URL", raising=False)
    url = url.replace("//", f"//:{PASSWORD}@", 1) if "//" in url else url
    with pytest.raises(ConfigError) as err:
        load_config(overrides={"data_dir": str(tmp_path), "auth": {"redis_url": url}})
    assert "auth.redis_url: not a Redis URL" in str(err.value)
    assert PASSWORD not in str(err.value)


def test_the_redis_url_can_come_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("HUSHGATE_REDIS_URL", raising=False)
    assert load_config(overrides={"data_dir": str(tmp_path)}).redis_url is None
    monkeypatch.setenv("HUSHGATE_REDIS_URL", "unix:///run/redis.sock?db=3")
    assert load_config(overrides={"data_dir": str(tmp_path)}).redis_url == \
        "unix:///run/redis.sock?db=3"
    monkeypatch.setenv("HG_TEST_REDIS_URL", f"rediss://:{PASSWORD}@cache:6380/1")
    cfg = load_config(overrides={"data_dir": str(tmp_path),
                                 "auth": {"redis_url_env": "HG_TEST_REDIS_URL"}})
    assert cfg.redis_url == f"rediss://:{PASSWORD}@cache:6380/1"
    cfg = load_config(overrides={"data_dir": str(tmp_path),
                                 "auth": {"redis_url": "redis://x:1/0"}})
    assert cfg.redis_url == "redis://x:1/0"  # the file wins over the environment
    monkeypatch.setenv("HG_TEST_REDIS_URL", f"https://:{PASSWORD}@cache")
    with pytest.raises(ConfigError) as err:
        load_config(overrides={"data_dir": str(tmp_path),
                               "auth": {"redis_url_env": "HG_TEST_REDIS_URL"}})
    assert "auth.redis_url_env (HG_TEST_REDIS_URL): not a Redis URL" in str(err.value)
    assert PASSWORD not in str(err.value)


# -- through the proxy -------------------------------------------------------------------


def call(port: int, key: str, fmt: str = "openai") -> tuple[int, dict[str, str], Any]:
    """One small request; (status, lower-cased headers, parsed JSON)."""
    if fmt == "anthropic":
        path, headers = "/v1/messages", {"x-api-key": key, "anthropic-version": "2023-06-01"}
        body = {"model": "claude-test", "max_tokens": 10,
                "messages": [{"role": "user", "content": "hi"}]}
    else:
        path, headers = "/v1/chat/completions", {"authorization": f"Bearer {key}"}
        body = {"model": "gpt-test", "max_tokens": 10,
                "messages": [{"role": "user", "content": "hi"}]}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    try:
        conn.request("POST", path, body=json.dumps(body).encode(),
                     headers={"content-type": "application/json", **headers})
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, json.loads(data)
    finally:
        conn.close()


class SecondProxy:
    """``hushgate --config X proxy`` in its own process (one mitmproxy master per process)."""

    def __init__(self, raw: dict[str, Any], tmp_path: Path) -> None:
        self.port = free_port()
        cfg = json.loads(json.dumps(raw))
        cfg["proxy"]["listen_port"] = self.port
        path = tmp_path / "second-proxy.yaml"
        path.write_text(yaml.safe_dump(cfg))
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("HUSHGATE_") or k == "HUSHGATE_VENV"}
        env["HUSHGATE_CONFIG"] = str(path)
        self.out_path, self.err_path = tmp_path / "second.out", tmp_path / "second.err"
        with open(self.out_path, "w") as out, open(self.err_path, "w") as err:
            self.proc = subprocess.Popen([HUSHGATE, "proxy"], env=env, stdout=out, stderr=err)
        deadline = time.monotonic() + 60
        while "running" not in self.out_path.read_text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"second proxy did not start: {self.output()}")
            time.sleep(0.1)

    def output(self) -> str:
        return self.out_path.read_text() + self.err_path.read_text()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait(60)


@pytest.fixture
def forget_keys(redis_client: redis.Redis) -> Iterator[list[str]]:
    """Key ids whose shared-limit keys this test owns (deleted afterwards)."""
    ids: list[str] = []
    yield ids
    for key_id in ids:
        mine = list(redis_client.scan_iter(match=f"hushgate:rl:*{key_id}*", count=1000))
        if mine:
            redis_client.delete(*mine)


def test_two_proxies_share_one_keys_rpm_limit(make_gateway, tmp_path, redis_client,
                                              forget_keys):
    gw = make_gateway(auth={"redis_url": REDIS_URL})
    key_id, key = gw.new_key(rpm_limit=3)
    forget_keys.append(key_id)
    services = gw.proxy.services
    threads: list[str] = []
    acquire = services.rpm.try_acquire

    def spy(*args: Any) -> int | None:
        threads.append(threading.current_thread().name)
        return acquire(*args)

    services.rpm.try_acquire = spy
    second = SecondProxy(gw.config.raw, tmp_path)
    try:
        got = [call(gw.port, key)[0], call(second.port, key)[0], call(gw.port, key)[0]]
        assert got == [200, 200, 200]
        status, headers, answer = call(second.port, key)  # the 4th across both proxies
        assert status == 429 and 1 <= int(headers["retry-after"]) <= 60
        assert answer["error"]["code"] == "rate_limited"
        assert answer["error"]["type"] and "requests-per-minute" in answer["error"]["message"]
        status, headers, answer = call(gw.port, key, "anthropic")
        assert status == 429 and 1 <= int(headers["retry-after"]) <= 60
        assert answer["type"] == "error" and answer["error"]["type"] == "rate_limit_error"
    finally:
        second.stop()
    # The Redis round trips ran on the worker threads, never on the proxy's event loop.
    assert threads and all(name.startswith("hushgate-db") for name in threads)
    assert "Traceback" not in second.output() and key not in second.output()
    rec = gw.last_record()
    assert (rec["status"], rec["error_type"]) == (429, "rate_limited")

    # Nothing in Redis but the key id: no key material in any name or value.
    secret = keys.parse(key).secret
    names = {n.decode() for n in redis_client.scan_iter(match=f"hushgate:rl:*{key_id}*")}
    assert names == {f"hushgate:rl:rpm:{{{key_id}}}", f"hushgate:rl:rpm:{{{key_id}}}:sum"}
    members = [m.decode() for m in redis_client.zrange(f"hushgate:rl:rpm:{{{key_id}}}", 0, -1)]
    assert len(members) == 3 and all(m.endswith(":1") for m in members)
    stored = [*names, *members, redis_client.get(f"hushgate:rl:rpm:{{{key_id}}}:sum").decode()]
    for name in redis_client.scan_iter(match="hushgate:rl:*"):
        stored.append(name.decode())
    assert not [s for s in stored if secret in s or key in s]
    assert all(0 < redis_client.pttl(n) <= 60_000 for n in names)


def test_redis_unreachable_requests_pass_with_per_process_limits(make_gateway, logs):
    dead = free_port()
    gw = make_gateway(auth={"redis_url": f"redis://:{PASSWORD}@127.0.0.1:{dead}/0"})
    _, key = gw.new_key(rpm_limit=2, tpm_limit=100_000)
    got = [call(gw.port, key) for _ in range(3)]
    assert [g[0] for g in got] == [200, 200, 429]
    assert int(got[2][1]["retry-after"]) >= 1 and got[2][2]["error"]["code"] == "rate_limited"
    assert call(gw.port, gw.key)[0] == 200  # a key without limits is untouched
    warnings = logs.outage_warnings()
    assert len(warnings) == 1
    for record in logs.records:
        text = record.getMessage()
        assert PASSWORD not in text and f":{dead}" not in text and "redis://" not in text
        assert record.exc_info is None and record.exc_text is None
    gw.assert_books_balance()
