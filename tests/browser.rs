//! Real-browser tests: headless Chromium (Debian's `chromium` and `chromium-driver`) driven by
//! Selenium (PyPI) runs the JavaScript client library's own tests (`clients/js/test/`) and the
//! demo chat + dashboard scenario (`tests/browser/demo_dashboard.py`) against real clusters.
//! Screenshots land in `target/browser-artifacts/`.
//!
//! Skipped with a message where Chromium, chromedriver or Selenium is missing; with `CI=true`
//! they are required (`.ci/run` installs them).

use std::path::Path;
use std::process::Command;
use std::sync::Mutex;

/// One browser scenario at a time: each runs a cluster and up to three Chromium sessions,
/// and two at once on a 2-core machine would only measure the machine.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn tools_missing() -> Option<String> {
    let mut missing = Vec::new();
    for tool in ["chromium", "chromedriver"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            missing.push(tool);
        }
    }
    let selenium = Command::new("python3")
        .args(["-c", "import selenium"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !selenium {
        missing.push("python3 selenium");
    }
    (!missing.is_empty()).then(|| missing.join(", "))
}

fn run_script(script: &str) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(missing) = tools_missing() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but {missing} missing (.ci/run installs chromium, chromium-driver and selenium)"
        );
        eprintln!(
            "skipped: {missing} not installed (apt-get install chromium chromium-driver; pip install selenium)"
        );
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let artifacts = root.join("target").join("browser-artifacts");
    let out = Command::new("python3")
        .arg(root.join(script))
        .args(["--bin", env!("CARGO_BIN_EXE_roomcast")])
        .env("RC_ARTIFACTS", &artifacts)
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}");
    assert!(
        out.status.success(),
        "{script} failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
}

#[test]
fn the_js_client_library_passes_its_tests_in_chromium() {
    run_script("tests/browser/js_client.py");
}

#[test]
fn demo_chat_and_dashboard_survive_a_kill_and_a_drain_in_chromium() {
    run_script("tests/browser/demo_dashboard.py");
}
