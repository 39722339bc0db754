"""A stand-in process tree for launcher process-handling tests: answers GET /health with 200 on the given
port after a short delay, and spawns a grandchild that would outlive a careless launcher. It logs the
start-up markers SGLang 0.5.17 logs, for the launcher's phase reader.

usage: python health_stub.py PORT PIDFILE
"""

import http.server
import subprocess
import sys
import time
from pathlib import Path

port, pidfile = int(sys.argv[1]), Path(sys.argv[2])
grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
pidfile.write_text(f"{grandchild.pid}\n")
print("[stub] Load weight begin. avail mem=139.07 GB", flush=True)
time.sleep(1.5)
print("[stub] Capture target prefill CUDA graph begin. backend=breakable, num_tokens=[4, 8]", flush=True)
time.sleep(1.5)
print("[stub] Engine startup timings (s): load_weight=1.50, cuda_graph={prefill=1.50}", flush=True)


class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()

    def log_message(self, *args):
        pass


print("stub: ready", flush=True)
http.server.HTTPServer(("127.0.0.1", port), Health).serve_forever()
