import signal
import subprocess
import sys


def test_agent_starts_and_stops_cleanly_on_sigterm():
    proc = subprocess.Popen(
        [sys.executable, "-m", "controller.agent", "--ofp-tcp-listen-port", "6699"],
        stderr=subprocess.PIPE,
        text=True,
    )
    # The log line says it is up; only then is the signal handler surely installed.
    assert "started" in proc.stderr.readline()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0
