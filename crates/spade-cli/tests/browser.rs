//! `spade serve` in a real browser: headless Chromium (Debian's, /usr/bin/chromium) driven
//! through the DevTools protocol. Trains a tiny VAE model with `spade train` (one iteration),
//! serves it, paints two regions of different classes with mouse events, waits for the
//! generated image, checks that it changes with the seed and with a region's class, and saves
//! a screenshot as `target/serve-screenshot.png`.
//!
//! Behind the `browser-test` feature (not in `cargo test --workspace`): `.ci/run` installs
//! Chromium and runs `cargo test --workspace --features spade-cli/browser-test --test browser`. Without
//! Chromium this test fails; it never skips.
use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

/// Kills a child process when dropped (the server and the browser, whatever the outcome).
struct Killer(Child);
impl Drop for Killer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A DevTools-protocol session on one page (flattened target session).
struct Cdp {
    ws: WebSocket<MaybeTlsStream<TcpStream>>,
    next: u64,
    session: Option<String>,
}

impl Cdp {
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.try_call(method, params).unwrap_or_else(|e| panic!("{method} failed: {e}"))
    }

    /// A command's result, or its error.
    fn try_call(&mut self, method: &str, params: Value) -> Result<Value, Value> {
        self.next += 1;
        let id = self.next;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = &self.session {
            msg["sessionId"] = json!(s);
        }
        self.ws.send(Message::text(msg.to_string())).unwrap();
        loop {
            let m = self.ws.read().unwrap_or_else(|e| panic!("DevTools connection lost during {method}: {e}"));
            let Message::Text(t) = m else { continue };
            let v: Value = serde_json::from_str(&t).unwrap();
            if v["id"].as_u64() == Some(id) {
                return match v.get("error") {
                    Some(e) => Err(e.clone()),
                    None => Ok(v["result"].clone()),
                };
            }
        }
    }

    /// Evaluates a JavaScript expression in the page (awaiting promises); its JSON value.
    fn eval(&mut self, expr: &str) -> Value {
        let r = self.call("Runtime.evaluate", json!({"expression": expr, "awaitPromise": true, "returnByValue": true}));
        if let Some(e) = r.get("exceptionDetails") {
            panic!("{expr}: {e}");
        }
        r["result"]["value"].clone()
    }

    fn wait_for(&mut self, what: &str, expr: &str, timeout: Duration) -> Value {
        let t0 = Instant::now();
        loop {
            // While the page navigates, its context may be gone: try again.
            let r = self
                .try_call("Runtime.evaluate", json!({"expression": expr, "awaitPromise": true, "returnByValue": true}));
            let v = match r {
                Ok(r) if r.get("exceptionDetails").is_none() => r["result"]["value"].clone(),
                _ => Value::Null,
            };
            if !v.is_null() && v != json!(false) {
                return v;
            }
            if t0.elapsed() > timeout {
                let status = self.eval("document.getElementById('status').textContent");
                panic!("timed out after {timeout:?} waiting for {what}; the page says: {status}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The number of images the page has shown so far.
    fn generated(&mut self) -> u64 {
        self.eval("Number(document.body.dataset.generated || 0)").as_u64().unwrap()
    }

    /// Waits until the page shows an image newer than `after`, and no request is pending;
    /// returns its hash (of the PNG bytes).
    fn next_image(&mut self, after: u64) -> String {
        let expr = format!(
            "(Number(document.body.dataset.generated || 0) > {after} && !spade.inflight && !spade.pending && spade.timer === null) ? spade.lastHash : null"
        );
        self.wait_for("a generated image", &expr, Duration::from_secs(120)).as_str().unwrap().to_string()
    }

    /// One mouse event; `down`: whether the left button is held during (or after) it.
    fn mouse(&mut self, kind: &str, x: f64, y: f64, down: bool) {
        let button = if kind == "mouseMoved" && !down { "none" } else { "left" };
        self.call(
            "Input.dispatchMouseEvent",
            json!({"type": kind, "x": x, "y": y, "button": button, "buttons": u8::from(down), "clickCount": 1}),
        );
    }

    /// A stroke through `points`, given as fractions of the canvas's width and height.
    fn stroke(&mut self, canvas: &Value, points: &[(f64, f64)]) {
        let at = |p: (f64, f64)| {
            (
                canvas["left"].as_f64().unwrap() + p.0 * canvas["width"].as_f64().unwrap(),
                canvas["top"].as_f64().unwrap() + p.1 * canvas["height"].as_f64().unwrap(),
            )
        };
        let (x, y) = at(points[0]);
        self.mouse("mouseMoved", x, y, false);
        self.mouse("mousePressed", x, y, true);
        for &p in &points[1..] {
            let (x, y) = at(p);
            self.mouse("mouseMoved", x, y, true);
        }
        let (x, y) = at(*points.last().unwrap());
        self.mouse("mouseReleased", x, y, false);
    }
}

fn spade() -> Command {
    Command::new(env!("CARGO_BIN_EXE_spade"))
}

fn target_dir() -> PathBuf {
    // CARGO_MANIFEST_DIR is crates/spade-cli; the workspace's target/ is two levels up.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"))
}

/// `spade train` for one iteration of a tiny VAE model on the synthetic dataset. The reference
/// ConvEncoder needs 256x256 inputs and z_dim 256. With the default init (variance 0.02) an
/// untrained generator's output is flat grey, and class changes would not show in the PNG.
fn train_tiny(dir: &Path) -> PathBuf {
    let cfg = dir.join("tiny.yaml");
    std::fs::write(
        &cfg,
        "data: {dataset_mode: synthetic, load_size: 256, crop_size: 256, synthetic_count: 2}\n\
         model: {ngf: 4, ndf: 4, n_layers_D: 2, use_vae: true, z_dim: 256, init_variance: 1.0}\nloss: {no_vgg_loss: true}\n\
         train: {batch_size: 1, niter: 1, max_iters: 1, seed: 0}\n",
    )
    .unwrap();
    let run = dir.join("run");
    let o =
        spade().args(["train", "--config"]).arg(&cfg).arg("--output-dir").arg(&run).arg("--quiet").output().unwrap();
    assert!(o.status.success(), "spade train failed: {}", String::from_utf8_lossy(&o.stderr));
    run
}

/// Starts `spade serve` on a free port; returns the process and the page's URL.
fn serve(run: &Path) -> (Killer, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = spade()
        .args(["serve", "--checkpoint"])
        .arg(run)
        .args(["--port", &port.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut k = Killer(child);
    let out = k.0.stdout.take().unwrap();
    let mut lines = BufReader::new(out).lines();
    let url = loop {
        let line = lines.next().expect("spade serve exited before it was serving").unwrap();
        eprintln!("serve: {line}");
        if let Some(rest) = line.split("http://").nth(1) {
            break format!("http://{}", rest.split_whitespace().next().unwrap());
        }
    };
    std::thread::spawn(move || lines.for_each(drop));
    (k, url)
}

/// Starts headless Chromium with a fresh profile; returns it and its DevTools websocket URL.
fn chromium(profile: &Path) -> (Killer, String) {
    let exe = "/usr/bin/chromium";
    assert!(Path::new(exe).exists(), "{exe} is missing: install Debian's chromium (apt-get install -y chromium)");
    let mut child = Command::new(exe)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--remote-debugging-port=0",
            "--window-size=1400,900",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("about:blank")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {exe}: {e}"));
    let err = child.stderr.take().unwrap();
    let k = Killer(child);
    let mut lines = BufReader::new(err).lines();
    let ws = loop {
        let line = lines.next().expect("chromium exited before it printed its DevTools address").unwrap();
        if let Some(rest) = line.split("DevTools listening on ").nth(1) {
            break rest.trim().to_string();
        }
    };
    std::thread::spawn(move || lines.for_each(drop));
    (k, ws)
}

#[test]
fn paint_two_regions_and_see_images_change() {
    let tmp = tempfile::tempdir().unwrap();
    let run = train_tiny(tmp.path());
    let (_server, url) = serve(&run);
    let (_browser, ws_url) = chromium(&tmp.path().join("profile"));
    let (ws, _) = tungstenite::connect(ws_url.as_str()).unwrap();
    let mut cdp = Cdp { ws, next: 0, session: None };
    let target = cdp.call("Target.createTarget", json!({"url": "about:blank"}));
    let attached = cdp.call("Target.attachToTarget", json!({"targetId": target["targetId"], "flatten": true}));
    cdp.session = Some(attached["sessionId"].as_str().unwrap().to_string());
    cdp.call(
        "Emulation.setDeviceMetricsOverride",
        json!({"width": 1360, "height": 760, "deviceScaleFactor": 1, "mobile": false}),
    );
    cdp.call("Page.enable", json!({}));
    cdp.call("Page.navigate", json!({"url": url}));
    cdp.wait_for(
        "the page to load",
        "document.readyState === 'complete' && !!window.spade && !!spade.ids",
        Duration::from_secs(30),
    );
    let first = cdp.next_image(0);

    // The model's palette with names and colours, and the canvas at the model's aspect ratio.
    let classes = cdp.eval("spade.classes.map(c => c.name)");
    assert_eq!(classes.as_array().unwrap().len(), 14, "{classes}");
    assert_eq!(cdp.eval("document.querySelectorAll('#palette .cls').length"), json!(14));
    assert_eq!(cdp.eval("[canvas.width, canvas.height]"), json!([256, 256]));
    assert_eq!(
        cdp.eval("getComputedStyle(document.getElementById('style-row')).display"),
        json!("flex"),
        "the model has an encoder: style upload shown"
    );
    let canvas = cdp.eval("(() => { const r = canvas.getBoundingClientRect(); return {left: r.left, top: r.top, width: r.width, height: r.height}; })()");

    // Region 1: grass, a thick stroke across the lower half; region 2: water, a blob upper right.
    let pick = |cdp: &mut Cdp, name: &str| {
        let ok = cdp.eval(&format!(
            "(() => {{ const el = [...document.querySelectorAll('#palette .cls')].find(e => e.textContent === '{name}'); if (!el) return false; el.click(); return spade.cls; }})()"
        ));
        assert!(ok.is_u64(), "no class {name} in the palette");
        ok.as_u64().unwrap()
    };
    let grass = pick(&mut cdp, "grass");
    cdp.eval("(() => { const s = document.getElementById('brush-size'); s.value = 60; s.dispatchEvent(new Event('input')); return true; })()");
    let before = cdp.generated();
    cdp.stroke(&canvas, &[(0.05, 0.75), (0.3, 0.78), (0.6, 0.72), (0.95, 0.76)]);
    let water = pick(&mut cdp, "water");
    cdp.stroke(&canvas, &[(0.6, 0.2), (0.8, 0.25), (0.75, 0.35), (0.62, 0.3)]);
    let painted = cdp.next_image(before);
    let present = cdp.eval("[...new Set(spade.ids)].sort((a, b) => a - b)");
    let present: Vec<u64> = present.as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
    assert!(
        present.contains(&grass) && present.contains(&water),
        "painted classes {present:?}, want {grass} and {water}"
    );
    assert_ne!(painted, first, "painting two regions changes the image");

    // Another seed: another image.
    let before = cdp.generated();
    cdp.eval("(() => { const s = document.getElementById('seed'); s.value = '12345'; s.dispatchEvent(new Event('change')); return true; })()");
    let reseeded = cdp.next_image(before);
    assert_ne!(reseeded, painted, "the image changes with the seed");

    // The water region becomes sand (fill tool): another image; no water left.
    let sand = pick(&mut cdp, "sand");
    cdp.eval("document.getElementById('tool-fill').click(); true");
    let before = cdp.generated();
    cdp.stroke(&canvas, &[(0.8, 0.25)]); // a point of the water stroke
    let refilled = cdp.next_image(before);
    let present = cdp.eval("[...new Set(spade.ids)]");
    let present: Vec<u64> = present.as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
    assert!(present.contains(&sand) && !present.contains(&water), "after the fill: classes {present:?}");
    assert_ne!(refilled, reseeded, "the image changes when a region's class changes");
    let status = cdp.eval("document.getElementById('status').textContent");
    assert!(status.as_str().unwrap().starts_with("generated in"), "{status}");

    let shot = cdp.call("Page.captureScreenshot", json!({"format": "png"}));
    let png = base64::engine::general_purpose::STANDARD.decode(shot["data"].as_str().unwrap()).unwrap();
    let dims = image::load_from_memory(&png).unwrap();
    assert_eq!((dims.width(), dims.height()), (1360, 760));
    let out = target_dir().join("serve-screenshot.png");
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    std::fs::write(&out, &png).unwrap();
    eprintln!("screenshot: {}", out.display());
}
