"""The session-end check in tests/conftest.py fails a run that leaves a child process or a
listening socket behind, and names the test after which it was first seen."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

CONFTEST = Path(__file__).resolve().parents[1] / "conftest.py"


@pytest.fixture
def suite(pytester: pytest.Pytester) -> pytest.Pytester:
    shutil.copy(CONFTEST, pytester.path / "conftest.py")
    return pytester


def test_clean_run_passes(suite: pytest.Pytester) -> None:
    suite.makepyfile(test_clean="""
        import socket, subprocess

        def test_stops_what_it_starts():
            p = subprocess.Popen(["sleep", "30"])
            s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen()
            s.close(); p.kill(); p.wait()
    """)
    result = suite.runpytest_subprocess("-q", "-p", "no:cacheprovider")
    assert result.ret == 0, result.stdout.str()
    assert "leftovers" not in result.stdout.str()


def test_leftover_process_and_socket_fail_the_run(suite: pytest.Pytester) -> None:
    suite.makepyfile(test_leaky="""
        import atexit, socket, subprocess

        KEEP = []
        # after the session-end check has looked, so this test leaves nothing either
        atexit.register(lambda: [p.kill() for p in KEEP if hasattr(p, "kill")])

        def test_fine():
            pass

        def test_leaks():
            KEEP.append(subprocess.Popen(["sleep", "30"]))
            s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen()
            KEEP.append(s)

        def test_after():
            pass
    """)
    result = suite.runpytest_subprocess("-q", "-p", "no:cacheprovider")
    out = result.stdout.str()
    assert result.ret == pytest.ExitCode.TESTS_FAILED, out
    assert "3 passed" in out
    assert "child process" in out and "sleep 30" in out
    assert "listening tcp port" in out
    assert out.count("first seen after test_leaky.py::test_leaks") == 2, out
