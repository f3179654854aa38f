//! A headless Chromium (Debian's `chromium`) driven over the DevTools protocol, so the
//! console's tests use it as a person would: load a page, fill a form, click, read what the
//! page shows, and take a screenshot of it.
//!
//! [`Browser::start`] gives `None`, saying why on stderr, where Chromium is absent or cannot
//! start: the browser tests skip then. `CHROMIUM` names another binary.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use base64::Engine;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long one page load or DevTools call may take.
const STEP: Duration = Duration::from_secs(30);

/// One headless Chromium with one page.
pub struct Browser {
    child: tokio::process::Child,
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    session: String,
    next_id: u64,
    /// Events read while waiting for an answer, oldest first.
    events: VecDeque<Value>,
    profile: PathBuf,
}

impl Browser {
    /// Starts Chromium with a fresh profile and opens a 1280×900 page; `None` (said on
    /// stderr) where it cannot start.
    pub async fn start() -> Option<Self> {
        let binary = std::env::var("CHROMIUM").unwrap_or_else(|_| "chromium".into());
        let profile =
            std::env::temp_dir().join(format!("leadpipe-chromium-{}", uuid::Uuid::new_v4()));
        let spawned = tokio::process::Command::new(&binary)
            .args([
                "--headless=new",
                // Tests run as root in CI containers, where the sandbox cannot start.
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--remote-debugging-port=0",
                "--window-size=1280,900",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn();
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => {
                eprintln!(
                    "skipping the browser part: cannot run {binary} ({e}); `apt-get install chromium` (or set CHROMIUM)"
                );
                return None;
            }
        };
        let stderr = child.stderr.take().expect("piped");
        let mut lines = BufReader::new(stderr).lines();
        let mut said = Vec::new();
        let url = tokio::time::timeout(STEP, async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(url) = line.strip_prefix("DevTools listening on ") {
                    return Some(url.trim().to_owned());
                }
                said.push(line);
            }
            None
        })
        .await
        .ok()
        .flatten();
        let Some(url) = url else {
            eprintln!(
                "skipping the browser part: {binary} did not start: {}",
                said.join(" | ")
            );
            return None;
        };
        // Chromium keeps writing to stderr; drain it so it never blocks.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let (ws, _) = tokio_tungstenite::connect_async(url.as_str()).await.ok()?;
        let mut browser = Self {
            child,
            ws,
            session: String::new(),
            next_id: 0,
            events: VecDeque::new(),
            profile,
        };
        let target = browser
            .call("Target.createTarget", json!({"url": "about:blank"}))
            .await;
        let attached = browser
            .call(
                "Target.attachToTarget",
                json!({"targetId": target["targetId"], "flatten": true}),
            )
            .await;
        browser.session = attached["sessionId"].as_str()?.to_owned();
        browser.call("Page.enable", json!({})).await;
        browser.call("Runtime.enable", json!({})).await;
        browser
            .call(
                "Emulation.setDeviceMetricsOverride",
                json!({"width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": false}),
            )
            .await;
        Some(browser)
    }

    /// Sends one DevTools command (to the page once attached) and returns its result.
    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({"id": id, "method": method, "params": params});
        if !self.session.is_empty() {
            message["sessionId"] = json!(self.session);
        }
        self.ws
            .send(Message::text(message.to_string()))
            .await
            .expect("DevTools is connected");
        loop {
            let m = self.read().await;
            if m["id"] == id {
                assert!(m.get("error").is_none(), "{method}: {}", m["error"]);
                return m["result"].clone();
            }
            if m.get("method").is_some() {
                self.events.push_back(m);
            }
        }
    }

    async fn read(&mut self) -> Value {
        loop {
            let m = tokio::time::timeout(STEP, self.ws.next())
                .await
                .expect("DevTools answers")
                .expect("DevTools is connected")
                .expect("a DevTools message");
            if let Message::Text(t) = m {
                return serde_json::from_str(&t).expect("DevTools speaks JSON");
            }
        }
    }

    /// Waits for the page's next `Page.loadEventFired`.
    async fn loaded(&mut self) {
        loop {
            if let Some(i) = self
                .events
                .iter()
                .position(|e| e["method"] == "Page.loadEventFired")
            {
                self.events.drain(..=i);
                return;
            }
            let m = self.read().await;
            if m.get("method").is_some() {
                self.events.push_back(m);
            }
        }
    }

    /// Loads `url` and waits until it is loaded.
    pub async fn open(&mut self, url: &str) {
        self.events.clear();
        let r = self.call("Page.navigate", json!({"url": url})).await;
        assert!(r.get("errorText").is_none(), "{url}: {}", r["errorText"]);
        self.loaded().await;
    }

    /// Runs `script` in the page (a promise is awaited) and returns its value.
    pub async fn eval(&mut self, script: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": script, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        assert!(
            r.get("exceptionDetails").is_none(),
            "{script}: {}",
            r["exceptionDetails"]
        );
        r["result"]["value"].clone()
    }

    /// The text of the first element matching `selector` (`None`: no such element).
    pub async fn text(&mut self, selector: &str) -> Option<String> {
        let v = self
            .eval(&format!(
                "(() => {{ const e = document.querySelector({}); return e ? e.innerText : null; }})()",
                json!(selector)
            ))
            .await;
        v.as_str().map(str::to_owned)
    }

    /// The page's whole HTML as it is now.
    pub async fn html(&mut self) -> String {
        self.eval("document.documentElement.outerHTML")
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Types `value` into the input matching `selector`.
    pub async fn fill(&mut self, selector: &str, value: &str) {
        let found = self
            .eval(&format!(
                "(() => {{ const e = document.querySelector({}); if (!e) return false; e.value = {}; return true; }})()",
                json!(selector),
                json!(value)
            ))
            .await;
        assert_eq!(found, json!(true), "no input {selector}");
    }

    /// Clicks the element matching `selector` and waits for the page it leads to.
    pub async fn click_and_wait(&mut self, selector: &str) {
        self.events.clear();
        let found = self
            .eval(&format!(
                "(() => {{ const e = document.querySelector({}); if (!e) return false; e.click(); return true; }})()",
                json!(selector)
            ))
            .await;
        assert_eq!(found, json!(true), "nothing to click at {selector}");
        self.loaded().await;
    }

    /// Waits (up to `timeout`) until `condition` (a script) is true in the page.
    pub async fn wait_until(&mut self, condition: &str, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.eval(condition).await == json!(true) {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The page's URL now.
    pub async fn url(&mut self) -> String {
        self.eval("location.href")
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Saves a PNG of the whole page at `path`.
    pub async fn screenshot(&mut self, path: &Path) {
        let size = self.call("Page.getLayoutMetrics", json!({})).await;
        let height = size["cssContentSize"]["height"]
            .as_f64()
            .unwrap_or(900.0)
            .max(300.0);
        let shot = self
            .call(
                "Page.captureScreenshot",
                json!({"format": "png", "captureBeyondViewport": true,
                       "clip": {"x": 0, "y": 0, "width": 1280, "height": height, "scale": 1}}),
            )
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().expect("a screenshot"))
            .expect("base64");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::fs::write(path, png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}
