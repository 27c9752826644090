#!/usr/bin/env python3
"""Runs the JS client library's tests (clients/js/test/) in headless Chromium against real nodes.

Why a real browser: roomcast.js is plain browser JavaScript (no Node on CI machines), and what
it must get right — reconnects, resumes, SSE fallback — depends on the browser's own WebSocket
and EventSource. So this starts a 3-node cluster and one node with `auth = required`, serves
clients/js/ over HTTP on 127.0.0.1 (a thread), and opens clients/js/test/test.html with the
nodes' URLs and two JWTs (a valid one and a bad one) in the query string. The page drives the
cluster through control endpoints on its own origin:

    POST /control/kill?node=I       SIGKILL node I (index or node id); waits until it exited
    POST /control/drain?node=I      SIGTERM: the node drains (hints, hand-over) and exits
    POST /control/restart?node=I    waits for node I to exit, starts it on the same ports
    POST /control/wait_live?count=N every running node sees N live, ready members
    POST /control/heal              restarts any node that is down, then waits for all live

It waits (deadline, polling) for window.__results.done, prints every test, saves a screenshot
to the artifacts dir, prints the browser console when something failed, and exits 1 then.

    python3 tests/browser/js_client.py --bin target/debug/roomcast [--only NAME] [--keep-open]
"""
import argparse
import base64
import hashlib
import hmac
import http.server
import json
import os
import shutil
import sys
import tempfile
import threading
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rc_cluster  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
CLIENT_DIR = os.path.join(ROOT, "clients", "js")
RUN_DEADLINE = 150.0
TYPES = {".js": "text/javascript; charset=utf-8", ".html": "text/html; charset=utf-8",
         ".ts": "text/plain; charset=utf-8", ".md": "text/plain; charset=utf-8",
         ".css": "text/css; charset=utf-8", ".json": "application/json"}


def b64url(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def hs256_jwt(secret, claims):
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64url(json.dumps(claims).encode())
    sig = hmac.new(secret, f"{header}.{body}".encode(), hashlib.sha256).digest()
    return f"{header}.{body}.{b64url(sig)}"


class Control:
    """What the page may do to the cluster. One action at a time."""

    def __init__(self, cluster):
        self.cluster = cluster
        self.lock = threading.Lock()

    def index(self, q):
        v = q.get("node", [""])[0]
        for i, n in enumerate(self.cluster.nodes):
            if v == str(i) or v == n.id:
                return i
        raise ValueError(f"no node {v!r}")

    def run(self, action, q):
        c = self.cluster
        with self.lock:
            if action == "kill":
                i = self.index(q)
                c.kill(i)
                return {"killed": c.nodes[i].id}
            if action == "drain":
                i = self.index(q)
                c.drain(i)
                return {"draining": c.nodes[i].id}
            if action == "restart":
                i = self.index(q)
                c.nodes[i].wait_exit(rc_cluster.DEADLINE)
                c.restart(i)
                return {"restarted": c.nodes[i].id}
            if action == "wait_live":
                c.wait_live(int(q.get("count", ["0"])[0]))
                return {"live": int(q["count"][0])}
            if action == "heal":
                return {"restarted": heal(c)}
            if action == "nodes":
                return {"nodes": [{"id": n.id, "ws": n.ws_url, "alive": n.alive()} for n in c.nodes]}
        raise ValueError(f"unknown action {action!r}")


def heal(c):
    """Brings every node back (after a test that killed or drained one, passed or not)."""
    restarted = []
    for i, n in enumerate(c.nodes):
        if n.proc is not None and n.proc.poll() is None:
            continue
        n.wait_exit(rc_cluster.DEADLINE)
        c.restart(i)
        restarted.append(n.id)
    c.wait_live(len(c.nodes))
    return restarted


def make_handler(control):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # quiet
            pass

        def send_body(self, status, body, ctype):
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            path = urllib.parse.urlparse(self.path).path
            rel = os.path.normpath(urllib.parse.unquote(path)).lstrip("/")
            full = os.path.join(CLIENT_DIR, rel)
            if not full.startswith(CLIENT_DIR + os.sep) or not os.path.isfile(full):
                self.send_body(404, b"not found\n", "text/plain")
                return
            with open(full, "rb") as f:
                body = f.read()
            ext = os.path.splitext(full)[1]
            self.send_body(200, body, TYPES.get(ext, "application/octet-stream"))

        def do_POST(self):
            u = urllib.parse.urlparse(self.path)
            n = int(self.headers.get("Content-Length") or 0)
            if n:
                self.rfile.read(n)
            if not u.path.startswith("/control/"):
                self.send_body(404, b"{}", "application/json")
                return
            action = u.path[len("/control/"):]
            t0 = time.monotonic()
            try:
                out = control.run(action, urllib.parse.parse_qs(u.query))
                status = 200
            except Exception as e:  # noqa: BLE001 - reported to the page
                out = {"error": f"{type(e).__name__}: {e}"}
                status = 500
            print(f"  control {action} {u.query} -> {status} {json.dumps(out)} "
                  f"({time.monotonic() - t0:.1f}s)", flush=True)
            self.send_body(status, json.dumps(out).encode(), "application/json")

    return Handler


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin", default=os.environ.get("ROOMCAST_BIN"), help="the roomcast binary")
    ap.add_argument("--only", help="run only the tests whose name contains this")
    args = ap.parse_args()
    if not args.bin:
        ap.error("--bin (or ROOMCAST_BIN) is required")
    if rc_cluster.chromium_paths() is None:
        print("chromium or chromedriver not found", file=sys.stderr)
        return 2

    tmp = tempfile.mkdtemp(prefix="rc-jstest-")
    secret = os.urandom(32).hex().encode()
    secret_file = os.path.join(tmp, "jwt-secret")
    with open(secret_file, "wb") as f:
        f.write(secret)
    now = int(time.time())
    good = hs256_jwt(secret, {"sub": "alice", "exp": now + 3600})
    bad = hs256_jwt(b"another secret that is long enough to be used!", {"sub": "mallory", "exp": now + 3600})

    started = time.monotonic()
    failed = True
    with rc_cluster.Cluster(args.bin, 3, log_dir=os.path.join(tmp, "cluster")) as cluster, \
            rc_cluster.Cluster(args.bin, 1, ["--auth", "required", "--jwt-secret-file", secret_file],
                               log_dir=os.path.join(tmp, "auth"), tag="auth") as auth:
        cluster.wait_live(3)
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), make_handler(Control(cluster)))
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        page = "http://127.0.0.1:%d/test/test.html?%s" % (server.server_address[1], urllib.parse.urlencode({
            "ws": ",".join(n.ws_url for n in cluster.nodes),
            "ids": ",".join(n.id for n in cluster.nodes),
            "authws": auth.nodes[0].ws_url,
            "good": good,
            "bad": bad,
            **({"only": args.only} if args.only else {}),
        }))
        print(f"cluster up ({time.monotonic() - started:.1f}s); logs in {tmp} (kept if a test fails)",
              flush=True)
        driver = rc_cluster.new_browser()
        try:
            driver.get(page)
            results = rc_cluster.wait_for(
                "the tests to finish",
                lambda: (lambda r: r if r and r.get("done") else None)(
                    driver.execute_script("return window.__results || null")),
                deadline=RUN_DEADLINE, every=0.2)
            shot = os.path.join(rc_cluster.artifacts_dir(), "js_client.png")
            driver.set_window_size(1200, max(800, int(driver.execute_script(
                "return document.body.scrollHeight") or 800) + 40))
            driver.save_screenshot(shot)
            for t in results["tests"]:
                print(f"{'PASS' if t['pass'] else 'FAIL'} {t['name']} ({t['ms']} ms)")
                if t.get("error"):
                    print("    " + t["error"].replace("\n", "\n    "))
            failed = results["failed"] > 0 or not results["tests"]
            print(f"{results['passed']} passed, {results['failed']} failed "
                  f"in {time.monotonic() - started:.1f}s; screenshot {shot}")
        except Exception as e:  # noqa: BLE001
            print(f"FAIL the test page did not finish: {e}")
            try:
                driver.save_screenshot(os.path.join(rc_cluster.artifacts_dir(), "js_client.png"))
            except Exception:  # noqa: BLE001
                pass
        finally:
            if failed:
                print("--- browser console")
                print(rc_cluster.console_log(driver))
                print(f"--- node logs in {tmp}")
            driver.quit()
            server.shutdown()
    if not failed:
        shutil.rmtree(tmp, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
