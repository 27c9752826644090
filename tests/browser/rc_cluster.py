"""Shared by the browser tests: a roomcast cluster of real node processes on loopback, and a
headless Chromium driven by Selenium.

Nodes get fixed free ports, so a node restarted with `restart(i)` comes back at the same
address (a browser that lost it can find it again). Everything waits for conditions with a
deadline; nothing sleeps to synchronise.

    with Cluster(os.environ["ROOMCAST_BIN"], 3) as c:
        c.wait_live(3)
        c.kill(1)            # SIGKILL
        c.wait_live(2, via=0)
        c.restart(1)
        c.wait_live(3)
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request

DEADLINE = 30.0
FAST_GOSSIP = ["--gossip-interval", "100ms", "--failure-timeout", "2s"]


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_for(what, cond, deadline=DEADLINE, every=0.05):
    """Polls `cond()` until it returns a truthy value (returned) or the deadline passes."""
    end = time.monotonic() + deadline
    last_err = None
    while time.monotonic() < end:
        try:
            v = cond()
            if v:
                return v
        except Exception as e:  # noqa: BLE001 - a node that is starting refuses connections
            last_err = e
        time.sleep(every)
    raise TimeoutError(f"timed out waiting for {what}" + (f" (last error: {last_err})" if last_err else ""))


def get_json(url, timeout=2.0):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


class Node:
    def __init__(self, binary, node_id, args, log_dir):
        self.binary = binary
        self.id = node_id
        self.http_port = free_port()
        self.cluster_port = free_port()
        self.args = args
        self.log_path = os.path.join(log_dir, f"{node_id}.log")
        self.proc = None

    @property
    def http(self):
        return f"127.0.0.1:{self.http_port}"

    @property
    def url(self):
        return f"http://{self.http}"

    @property
    def ws_url(self):
        return f"ws://{self.http}/ws"

    def start(self, seed=None):
        cmd = [
            self.binary,
            "--node-id", self.id,
            "--listen", self.http,
            "--cluster-listen", f"127.0.0.1:{self.cluster_port}",
            *FAST_GOSSIP,
        ]
        if seed:
            cmd += ["--seed", seed]
        cmd += self.args
        env = {k: v for k, v in os.environ.items() if not k.startswith("ROOMCAST_")}
        env["ROOMCAST_LOG_FORMAT"] = "text"
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=self.log, env=env)

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig):
        if self.alive():
            self.proc.send_signal(sig)

    def wait_exit(self, deadline=DEADLINE):
        if self.proc is not None:
            self.proc.wait(timeout=deadline)
            self.log.close()

    def cluster(self):
        return get_json(self.url + "/cluster")


class Cluster:
    """`n` nodes seeded by the first; `args` go to every node. `tag` (optional) is added to the
    node ids, so two clusters of one test process have distinct ids."""

    def __init__(self, binary, n, args=(), log_dir=None, tag=None):
        self.binary = binary
        self.log_dir = log_dir or tempfile.mkdtemp(prefix="rc-browser-")
        os.makedirs(self.log_dir, exist_ok=True)
        tag = f"b{os.getpid()}" + (f"-{tag}" if tag else "")
        self.nodes = [Node(binary, f"{tag}-{i}", list(args), self.log_dir) for i in range(n)]
        self.seed = f"127.0.0.1:{self.nodes[0].cluster_port}"

    def __enter__(self):
        for i, node in enumerate(self.nodes):
            node.start(None if i == 0 else self.seed)
        for node in self.nodes:
            wait_for(f"{node.id} ready", lambda node=node: self._ready(node))
        return self

    def __exit__(self, *exc):
        for node in self.nodes:
            node.signal(signal.SIGKILL)
        for node in self.nodes:
            try:
                node.wait_exit(5)
            except Exception:  # noqa: BLE001
                pass
        return False

    @staticmethod
    def _ready(node):
        with urllib.request.urlopen(node.url + "/readyz", timeout=2) as r:
            return r.status == 200

    def live_ids(self, via):
        v = self.nodes[via].cluster()
        return sorted(m["id"] for m in v["members"] if m["live"] and m["ready"])

    def wait_live(self, count, via=None):
        """Waits until `via` (default: every running node) sees `count` live, ready members."""
        vias = [via] if via is not None else [i for i, n in enumerate(self.nodes) if n.alive()]
        for i in vias:
            wait_for(f"{self.nodes[i].id} sees {count} live members",
                     lambda i=i: len(self.live_ids(i)) == count)

    def kill(self, i):
        """SIGKILL: the node dies without a word to anyone."""
        self.nodes[i].signal(signal.SIGKILL)
        self.nodes[i].wait_exit()

    def drain(self, i):
        """SIGTERM: the node hands its rooms over, sends its clients reconnect hints and exits."""
        self.nodes[i].signal(signal.SIGTERM)

    def restart(self, i):
        """Starts node `i` again on the same ports, seeded by a running node."""
        node = self.nodes[i]
        if node.alive():
            raise RuntimeError(f"{node.id} is still running")
        seed = next(f"127.0.0.1:{n.cluster_port}" for n in self.nodes if n.alive())
        node.start(seed)
        wait_for(f"{node.id} ready again", lambda: self._ready(node))


def chromium_paths():
    """(chromium, chromedriver) from Debian's packages, or None where they are missing."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not browser or not driver:
        return None
    return browser, driver


def new_browser(width=1200, height=800):
    """A headless Chromium session (Selenium), with the page's console kept for the logs."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver = chromium_paths()
    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
              f"--window-size={width},{height}", "--disable-extensions",
              "--no-first-run", "--disable-background-networking"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=driver), options=opts)


def artifacts_dir():
    """Where screenshots go: $RC_ARTIFACTS or target/browser-artifacts."""
    d = os.environ.get("RC_ARTIFACTS") or os.path.join(
        os.path.dirname(__file__), "..", "..", "target", "browser-artifacts")
    d = os.path.abspath(d)
    os.makedirs(d, exist_ok=True)
    return d


def console_log(driver):
    try:
        return "\n".join(f"{e['level']}: {e['message']}" for e in driver.get_log("browser"))
    except Exception:  # noqa: BLE001
        return ""
