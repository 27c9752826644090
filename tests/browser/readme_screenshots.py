#!/usr/bin/env python3
"""Takes the README's screenshots (docs/img/demo.png, docs/img/dashboard.png) from a real
3-node cluster under a light load, in headless Chromium.

    python3 tests/browser/readme_screenshots.py --bin target/release/roomcast [--out docs/img]

Not a test: run it by hand when the pages change.
"""
import argparse
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rc_cluster as rc  # noqa: E402
from demo_dashboard import Chat, Page  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "..", "docs", "img"))
    args = ap.parse_args()
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    binary = os.path.abspath(args.bin)
    with rc.Cluster(binary, 3) as c:
        c.wait_live(3)
        urls = ",".join(n.ws_url for n in c.nodes)
        load = subprocess.Popen(
            [binary, "bench", "--url", urls, "--subscribers", "240", "--rooms", "12",
             "--publishers", "3", "--rate", "300", "--duration", "60s", "--chaos", "--quiet"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        pages = []
        try:
            ann = Chat("ann", f"{c.nodes[0].url}/demo?name=ann&room=lobby&autojoin=1")
            bob = Chat("bob", f"{c.nodes[1].url}/demo?name=bob&room=lobby&autojoin=1")
            pages += [ann, bob]
            for p in (ann, bob):
                rc.wait_for(f"{p.name} joined", lambda p=p: p.body("joined") == "true")
            for who, text in [(ann, "hi bob, I'm on node 0"), (bob, "hi ann! node 1 here"),
                              (ann, "kill my node and watch this page move"),
                              (bob, "nothing lost, nothing doubled")]:
                who.say(text)
            rc.wait_for("lines", lambda: len(ann.lines()) >= 4)
            c.kill(0)
            rc.wait_for("ann moved", lambda: ann.node() not in (None, c.nodes[0].id) and ann.body("state") == "connected")
            ann.say("still here, on another node")
            rc.wait_for("line after the move", lambda: len(bob.lines()) >= 5 and len(ann.lines()) >= 5)
            ann.shot_to = os.path.join(out, "demo.png")
            ann.driver.save_screenshot(ann.shot_to)
            c.restart(0)
            c.wait_live(3)
            dash = Page("dashboard", c.nodes[2].url + "/dashboard")
            pages.append(dash)
            rc.wait_for("dashboard", lambda: dash.body("liveMembers") == "3")
            # Let the plots fill a little.
            rc.wait_for("20 s of plot", lambda: dash.js(
                "return document.querySelector('#chart-deliveries path') !== null")
                and dash.js("return performance.now()") > 20000, deadline=40)
            dash.driver.set_window_size(1200, 1000)
            dash.driver.save_screenshot(os.path.join(out, "dashboard.png"))
            print(f"wrote {out}/demo.png and {out}/dashboard.png")
        finally:
            for p in pages:
                p.close()
            load.kill()


if __name__ == "__main__":
    main()
