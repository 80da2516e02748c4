"""Checks an installed lameduck wheel (tests/dist/check.sh): the import, its version, and a
real run of smoke_server.py ended by SIGTERM (exit 0, the slow path's log lines)."""

import os
import signal
import subprocess
import sys
import threading
import urllib.request

import lameduck

expected = sys.argv[1]
assert lameduck.__version__ == expected, (lameduck.__version__, expected)
assert issubclass(lameduck.ExpiredError, lameduck.LameDuckError)
here = os.path.dirname(os.path.abspath(__file__))
server = subprocess.Popen(
    [sys.executable, os.path.join(here, "smoke_server.py")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
)
# Bounded: a server that never says it is ready is killed, and readline() returns "".
watchdog = threading.Timer(60, server.kill)
watchdog.start()
try:
    assert server.stdout is not None
    line = server.stdout.readline()  # the server prints its port once ready, or exits
    assert line.startswith("listening on "), (line, server.stderr.read() if server.stderr else "")
    port = int(line.split()[-1])
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as response:
        assert response.read() == f"hello from lameduck {expected}\n".encode()
    server.send_signal(signal.SIGTERM)
    out, err = server.communicate(timeout=60)
    assert server.returncode == 0, (server.returncode, err)
    assert "Received signal [terminated]; entering lame-duck mode for 5s" in err, err
    assert "Server stopped" in err, err
finally:
    watchdog.cancel()
    if server.poll() is None:
        server.kill()
        server.wait()
print(f"python {sys.version.split()[0]}: lameduck {lameduck.__version__} ok")
