#!/usr/bin/env python3
"""The demo chat and the dashboard in real headless Chromium against a 3-node cluster.

    python3 tests/browser/demo_dashboard.py --bin target/release/roomcast

1. The dashboard (served by node 2) shows 3 live members.
2. Ann's browser on node 0 and Bob's on node 1 chat in one room through the demo page.
3. Node 0 is SIGKILLed while both keep typing: Ann's page reconnects to another node, and at
   the end both pages show every line exactly once, in the same order. The dashboard shows
   2 members within seconds, then 3 again once node 0 is restarted.
4. Node 1 is drained (SIGTERM): Bob's page follows the reconnect hint, the dashboard shows
   the drain, and the chat goes on with nothing lost.

Screenshots of every step go to the artifacts directory ($RC_ARTIFACTS, default
target/browser-artifacts). Exits non-zero on any failure, with the pages' consoles and the
node logs' location.
"""
import argparse
import os
import sys
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rc_cluster as rc  # noqa: E402

DEADLINE = 30.0


class Page:
    def __init__(self, name, url):
        self.name = name
        self.driver = rc.new_browser()
        self.driver.get(url)

    def js(self, script, *args):
        return self.driver.execute_script(script, *args)

    def body(self, attr):
        return self.js(f"return document.body.dataset[{attr!r}] ?? null")

    def shot(self, name):
        path = os.path.join(rc.artifacts_dir(), name)
        self.driver.save_screenshot(path)
        print(f"screenshot: {path}")

    def close(self):
        try:
            self.driver.quit()
        except Exception:  # noqa: BLE001
            pass


class Chat(Page):
    def node(self):
        return self.body("node")

    def lines(self):
        return self.js("return (window.roomcastDemo && window.roomcastDemo.lines) || []")

    def say(self, text):
        """Types a line and presses Enter, as a person would."""
        from selenium.webdriver.common.by import By
        from selenium.webdriver.common.keys import Keys
        box = self.driver.find_element(By.ID, "text")
        box.send_keys(text + Keys.ENTER)

    def errors(self):
        return self.js("return (window.roomcastDemo && window.roomcastDemo.errors) || []")


def texts(page):
    return [f"{line['name']}: {line['text']}" for line in page.lines()]


def check_same_lines(a, b, expected):
    la, lb = a.lines(), b.lines()
    ta, tb = texts(a), texts(b)
    for page, t in ((a, ta), (b, tb)):
        doubled = sorted({x for x in t if t.count(x) > 1})
        assert not doubled, f"{page.name} shows doubled lines: {doubled}"
        missing = [x for x in expected if x not in t]
        assert not missing, f"{page.name} is missing lines: {missing}"
    assert ta == tb, f"the pages disagree on the order:\n{ta}\n{tb}"
    # One order: (epoch, seq) pairs agree too, with no seq seen twice in an epoch.
    assert [(x["epoch"], x["seq"]) for x in la] == [(x["epoch"], x["seq"]) for x in lb]
    seen = set()
    for x in la:
        key = (x["epoch"], x["seq"])
        assert key not in seen, f"seq {key} twice"
        seen.add(key)


def run(binary):
    room = "demo-" + uuid.uuid4().hex[:8]
    pages = []
    with rc.Cluster(binary, 3) as c:
        try:
            c.wait_live(3)
            ids = [n.id for n in c.nodes]

            dash = Page("dashboard", c.nodes[2].url + "/dashboard")
            pages.append(dash)
            rc.wait_for("dashboard shows 3 live members", lambda: dash.body("liveMembers") == "3")
            rc.wait_for("dashboard numbers", lambda: dash.js(
                "return document.querySelectorAll('#members tbody tr').length") == 3)
            dash.shot("dashboard-3-members.png")

            ann = Chat("ann", f"{c.nodes[0].url}/demo?name=ann&room={room}&autojoin=1")
            bob = Chat("bob", f"{c.nodes[1].url}/demo?name=bob&room={room}&autojoin=1")
            pages += [ann, bob]
            for p in (ann, bob):
                rc.wait_for(f"{p.name} joined", lambda p=p: p.body("joined") == "true")
            assert ann.node() == ids[0], f"ann is on {ann.node()}, not {ids[0]}"
            assert bob.node() == ids[1], f"bob is on {bob.node()}, not {ids[1]}"
            rc.wait_for("both see each other present",
                        lambda: all(sorted(p.js("return window.roomcastDemo.people || []")) == ["ann", "bob"]
                                    for p in (ann, bob)))

            expected = []
            for i in range(1, 6):
                ann.say(f"hello from ann {i}")
                bob.say(f"hello from bob {i}")
                expected += [f"ann: hello from ann {i}", f"bob: hello from bob {i}"]
            rc.wait_for("10 lines on both pages", lambda: len(ann.lines()) >= 10 and len(bob.lines()) >= 10)
            check_same_lines(ann, bob, expected)
            ann.shot("demo-ann.png")
            bob.shot("demo-bob.png")

            # Kill Ann's node and keep typing on both pages while it is gone.
            c.kill(0)
            for i in range(6, 11):
                ann.say(f"hello from ann {i}")
                bob.say(f"hello from bob {i}")
                expected += [f"ann: hello from ann {i}", f"bob: hello from bob {i}"]
            rc.wait_for("ann reconnected to another node",
                        lambda: ann.node() not in (None, ids[0]) and ann.body("state") == "connected")
            rc.wait_for("dashboard shows 2 live members", lambda: dash.body("liveMembers") == "2")
            dash.shot("dashboard-node-killed.png")
            rc.wait_for("20 lines on both pages",
                        lambda: len(ann.lines()) >= 20 and len(bob.lines()) >= 20, deadline=DEADLINE)
            check_same_lines(ann, bob, expected)
            ann.shot("demo-ann-after-kill.png")
            print(f"after the kill ann is on {ann.node()}; 20 lines, none lost or doubled")

            c.restart(0)
            c.wait_live(3)
            rc.wait_for("dashboard shows 3 live members again", lambda: dash.body("liveMembers") == "3")
            dash.shot("dashboard-node-back.png")

            # Drain Bob's node: his page follows the reconnect hint.
            c.drain(1)
            rc.wait_for("dashboard shows the drain",
                        lambda: dash.js(f"return document.querySelector('#members tr[data-node=\"{ids[1]}\"]')?.dataset.state")
                        in ("draining", "dead") or dash.body("liveMembers") == "2")
            dash.shot("dashboard-drain.png")
            rc.wait_for("bob moved off the drained node",
                        lambda: bob.node() not in (None, ids[1]) and bob.body("state") == "connected")
            c.nodes[1].wait_exit()
            for i in range(11, 14):
                ann.say(f"hello from ann {i}")
                bob.say(f"hello from bob {i}")
                expected += [f"ann: hello from ann {i}", f"bob: hello from bob {i}"]
            rc.wait_for("26 lines on both pages", lambda: len(ann.lines()) >= 26 and len(bob.lines()) >= 26)
            check_same_lines(ann, bob, expected)
            bob.shot("demo-bob-after-drain.png")
            c.restart(1)
            c.wait_live(3)
            rc.wait_for("dashboard shows 3 live members at the end", lambda: dash.body("liveMembers") == "3")
            dash.shot("dashboard-end.png")
            for p in (ann, bob):
                errs = [e for e in p.errors() if "not sent" in e]
                assert not errs, f"{p.name}: {errs}"
            print("PASS: demo chat and dashboard through a kill and a drain")
            return 0
        except Exception as e:  # noqa: BLE001
            print(f"FAIL: {e}", file=sys.stderr)
            for p in pages:
                try:
                    p.shot(f"failure-{p.name}.png")
                except Exception:  # noqa: BLE001
                    pass
                print(f"--- {p.name} console:\n{rc.console_log(p.driver)}", file=sys.stderr)
            print(f"node logs: {c.log_dir}", file=sys.stderr)
            return 1
        finally:
            for p in pages:
                p.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", required=True, help="the roomcast binary")
    args = ap.parse_args()
    start = time.monotonic()
    rc_ = run(os.path.abspath(args.bin))
    print(f"took {time.monotonic() - start:.1f}s")
    sys.exit(rc_)


if __name__ == "__main__":
    main()
