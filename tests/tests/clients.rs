//! Real clients through keel: curl (HTTP/1.1 and h2c by prior knowledge, with bodies
//! and streamed uploads), h2load and nghttp (HTTP/2 load and the SETTINGS keel sends),
//! a grpcio client and server (unary, server and client streaming, bidi, metadata,
//! trailers, errors, deadlines, keel's own deadline from grpc-timeout), and a `websockets` client and echo server through
//! keel's `upgrade_configs`.
//!
//! Each test starts `target/debug/keel` on a bootstrap of its own, on loopback, with
//! real peers: the recording upstream of `keel_tests::upstream`, or the Python peers in
//! `tests/clients/` run from the virtualenv `target/grpc-venv`. The tools are installed
//! by `cargo xtask setup` (apt: curl, nghttp2-client; pip: grpcio, websockets); a
//! missing one fails the test with what to run. None of these tests needs root.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use keel_tests::diff::{target_dir, ChildGuard};
use keel_tests::upstream::{Record, Upstream};

// ---------------------------------------------------------------------------------------
// Harness.

/// keel serving one bootstrap, killed when dropped.
struct Keel {
    _child: ChildGuard,
    port: u16,
    dir: PathBuf,
}

impl Keel {
    /// Starts keel on `config`, where `{port}` is replaced by a free listener port and
    /// `{access_log}` by a file in the test's folder; waits until the listener accepts.
    fn start(test: &str, config: &str) -> Keel {
        Keel::start_program(test, config, false)
    }

    /// Like [`Keel::start`], with Envoy 1.40 (the differential tests' binary) instead
    /// of keel when `envoy` is set.
    fn start_program(test: &str, config: &str, envoy: bool) -> Keel {
        let dir = target_dir().join("clients").join(test);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let port = free_port();
        let access_log = dir.join("access.log");
        std::fs::write(&access_log, b"").expect("create the access log");
        let config = config
            .replace("{port}", &port.to_string())
            .replace("{access_log}", &access_log.display().to_string());
        let path = dir.join("bootstrap.yaml");
        std::fs::write(&path, &config).expect("write the bootstrap");
        let log = std::fs::File::create(dir.join("keel.log")).expect("create keel.log");
        let mut command = if envoy {
            let mut c = Command::new(keel_tests::diff::envoy_binary());
            // A base id of its own per Envoy (they share memory regions by it).
            static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(10);
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 20;
            let base_id = std::process::id() * 20 + n;
            c.args(["--log-level", "warn", "--base-id", &base_id.to_string()]);
            c
        } else {
            Command::new(keel_tests::keel_binary())
        };
        let child = command
            .arg("-c")
            .arg(&path)
            .args(["--concurrency", "2"])
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log"))
            .stderr(log)
            .spawn()
            .expect("start keel");
        let mut keel = Keel {
            _child: ChildGuard(child),
            port,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(keel.addr()).is_err() {
            if let Ok(Some(status)) = keel._child.0.try_wait() {
                panic!("keel exited ({status}): {}", keel.log());
            }
            assert!(
                Instant::now() < deadline,
                "keel did not listen: {}",
                keel.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        keel
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("keel.log")).unwrap_or_default()
    }

    /// The access-log lines, once there are at least `count` (5 s at most).
    fn access_log_lines(&self, count: usize) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let text = std::fs::read_to_string(self.dir.join("access.log")).unwrap_or_default();
            let lines: Vec<String> = text.lines().map(str::to_string).collect();
            if lines.len() >= count || Instant::now() >= deadline {
                return lines;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port on 127.0.0.1")
        .port()
}

/// A bootstrap with one HTTP listener on `{port}`: `hcm_extra` is added to the
/// connection manager (indented for it), `routes` are the routes of its one virtual
/// host, and `clusters` are `(name, port, http2)`.
fn bootstrap(hcm_extra: &str, routes: &str, clusters: &[(&str, u16, bool)]) -> String {
    let mut out = String::from(
        r#"static_resources:
  listeners:
  - name: main
    address: {socket_address: {address: 127.0.0.1, port_value: {port}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: clients
          codec_type: AUTO
          access_log:
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: {access_log}
              log_format:
                text_format_source:
                  inline_string: "%REQ(:METHOD)% %REQ(:PATH)% %PROTOCOL% %RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT%\n"
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"#,
    );
    for line in hcm_extra.lines() {
        out.push_str("          ");
        out.push_str(line);
        out.push('\n');
    }
    out.push_str(
        "          route_config:\n            name: clients\n            virtual_hosts:\n            - name: all\n              domains: [\"*\"]\n              routes:\n",
    );
    for line in routes.lines() {
        out.push_str("              ");
        out.push_str(line);
        out.push('\n');
    }
    out.push_str("  clusters:\n");
    for (name, port, http2) in clusters {
        out.push_str(&format!(
            "  - name: {name}\n    type: STATIC\n    connect_timeout: 1s\n    load_assignment:\n      cluster_name: {name}\n      endpoints:\n      - lb_endpoints:\n        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}\n"
        ));
        if *http2 {
            out.push_str("    typed_extension_protocol_options:\n      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n        explicit_http_config:\n          http2_protocol_options: {}\n");
        }
    }
    out
}

/// A tool `cargo xtask setup` installs; panics with what to do when it is missing.
fn tool(name: &str, package: &str) -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "{name} is not installed: run `cargo xtask setup` as root (it installs the apt \
             package {package})"
        )
    })
}

/// The Python of the virtualenv with grpcio and websockets.
fn venv_python() -> PathBuf {
    let python = target_dir().join("grpc-venv/bin/python");
    let ok = python.is_file()
        && Command::new(&python)
            .args(["-c", "import grpc, websockets"])
            .status()
            .is_ok_and(|s| s.success());
    assert!(
        ok,
        "{} with grpcio and websockets is missing: run `cargo xtask setup`, which makes it",
        python.display()
    );
    python
}

fn peer_script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("clients")
        .join(name)
}

/// A Python peer server: prints `port <n>` when it serves, ends when stdin closes.
struct PeerServer {
    child: ChildGuard,
    stdin: Option<ChildStdin>,
    port: u16,
}

impl PeerServer {
    fn start(script: &str) -> PeerServer {
        let mut child = Command::new(venv_python())
            .arg(peer_script(script))
            .arg("server")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {script} server: {e}"));
        let stdin = child.stdin.take();
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped stdout"))
            .read_line(&mut line)
            .expect("read the peer's port");
        let port = line
            .trim()
            .strip_prefix("port ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("{script} server said {line:?}, not its port"));
        PeerServer {
            child: ChildGuard(child),
            stdin,
            port,
        }
    }
}

impl Drop for PeerServer {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // ChildGuard kills it.
    }
}

/// Runs a command to its end (60 s at most), with no input unless the command has
/// one; panics with its output when it fails.
fn run_tool(command: &mut Command) -> String {
    run_tool_with_input(command.stdin(Stdio::null()))
}

/// [`run_tool`] for a command whose stdin is set.
fn run_tool_with_input(command: &mut Command) -> String {
    let mut child: Child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {command:?}: {e}"));
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let err_reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let out_reader = std::thread::spawn(move || {
        let mut text = Vec::new();
        let _ = stdout.read_to_end(&mut text);
        String::from_utf8_lossy(&text).into_owned()
    });
    let mut child = ChildGuard(child);
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.0.try_wait().expect("wait for the tool") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "{command:?} ran longer than 60 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = out_reader.join().expect("stdout reader");
    let err = err_reader.join().expect("stderr reader");
    assert!(
        status.success(),
        "{command:?} failed ({status})\nstdout:\n{out}\nstderr:\n{err}"
    );
    out
}

// ---------------------------------------------------------------------------------------
// curl.

#[test]
fn curl_http1_and_h2c_with_bodies_and_streamed_uploads() {
    let curl = tool("curl", "curl");
    let app = Upstream::start("app");
    let keel = Keel::start(
        "curl",
        &bootstrap(
            "",
            "- match: {prefix: \"/\"}\n  route: {cluster: app}",
            &[("app", app.port(), false)],
        ),
    );
    let dir = &keel.dir;
    // 3 MB: curl sends `expect: 100-continue` over HTTP/1.1 for a body this large, and
    // waits a second for the 100 unless the proxy sends it.
    let body: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let body_file = dir.join("body.bin");
    std::fs::write(&body_file, &body).unwrap();

    // curl's `-w` line first (status, HTTP version), then the upstream's JSON record.
    let curl_run = |version: &str, args: &[&str], stdin_file: Option<&Path>| -> (String, Record) {
        let mut command = Command::new(&curl);
        command
            .args(["-sS", "--max-time", "30", version])
            .args([
                "-o",
                "-",
                "-w",
                "\n@@%{http_code} %{http_version}@@%{time_total}",
            ])
            .args(args);
        let output = match stdin_file {
            None => run_tool(&mut command),
            Some(file) => {
                let file = std::fs::File::open(file).unwrap();
                run_tool_with_input(command.stdin(file))
            }
        };
        // -w prints after the body.
        let (json, meta) = output
            .rsplit_once("\n@@")
            .unwrap_or_else(|| panic!("curl printed {output:?}"));
        let (meta, seconds) = meta.split_once("@@").expect("status@@time");
        let seconds: f64 = seconds.parse().expect("curl's time_total");
        assert!(
            seconds < 0.9,
            "{version} {args:?} took {seconds} s (a 100-continue wait is 1 s)"
        );
        let record: Record =
            serde_json::from_str(json).unwrap_or_else(|e| panic!("upstream record {json:?}: {e}"));
        (meta.to_string(), record)
    };
    let data = format!("@{}", body_file.display());

    for (version, shown) in [("--http1.1", "1.1"), ("--http2-prior-knowledge", "2")] {
        // A body with a content-length.
        let (meta, record) = curl_run(
            version,
            &[
                "--data-binary",
                &data,
                "-H",
                "content-type: application/octet-stream",
                &keel.url("/upload?v=1"),
            ],
            None,
        );
        assert_eq!(meta, format!("200 {shown}"), "{version} POST");
        assert_eq!(record.method, "POST");
        assert_eq!(record.path, "/upload?v=1");
        assert_eq!(
            record.body_length,
            body.len(),
            "{version}: the whole body arrived"
        );
        assert_eq!(
            record.version, "HTTP/1.1",
            "the app cluster speaks HTTP/1.1"
        );
        assert_eq!(
            record.header("content-length"),
            vec![body.len().to_string()]
        );
        assert_eq!(record.header("x-forwarded-proto"), vec!["http".to_string()]);
        assert!(
            record.header("expect").is_empty(),
            "keel answers 100-continue itself: {:?}",
            record.headers
        );
        assert_eq!(
            record.header("x-request-id").len(),
            1,
            "keel adds a request id"
        );

        // A streamed upload of unknown length (HTTP/1.1: chunked; HTTP/2: DATA frames
        // without content-length), read from stdin.
        let mut args = vec!["-T", "-", "-X", "POST"];
        if version == "--http1.1" {
            args.extend(["-H", "transfer-encoding: chunked"]);
        }
        let url = keel.url("/stream");
        args.push(&url);
        let (meta, record) = curl_run(version, &args, Some(&body_file));
        assert_eq!(meta, format!("200 {shown}"), "{version} streamed upload");
        assert_eq!(
            record.body_length,
            body.len(),
            "{version}: the streamed body arrived"
        );
        assert!(
            record.header("content-length").is_empty(),
            "{version}: no length was known: {:?}",
            record.headers
        );
        assert_eq!(
            record.header("transfer-encoding"),
            vec!["chunked".to_string()],
            "{version}: keel streams it to the HTTP/1.1 upstream chunked"
        );
    }

    // Every exchange is in the access log with its request body size.
    let lines = keel.access_log_lines(4);
    assert_eq!(lines.len(), 4, "{lines:?}");
    for line in &lines {
        assert!(
            line.contains(&format!(" 200 - {} ", body.len())),
            "bytes received logged: {line}"
        );
    }
    assert!(
        lines[0].starts_with("POST /upload?v=1 HTTP/1.1 200"),
        "{}",
        lines[0]
    );
    assert!(
        lines[2].starts_with("POST /upload?v=1 HTTP/2 200"),
        "{}",
        lines[2]
    );
}

// ---------------------------------------------------------------------------------------
// h2load and nghttp.

const H2_OPTIONS: &str = "http2_protocol_options:
  max_concurrent_streams: 7
  initial_stream_window_size: 131072
  initial_connection_window_size: 1048576";

#[test]
fn h2load_through_keel_gets_every_response() {
    let h2load = tool("h2load", "nghttp2-client");
    let h1_app = Upstream::start("h1");
    let h2_app = Upstream::start("h2");
    let keel = Keel::start(
        "h2load",
        &bootstrap(
            "",
            "- match: {prefix: \"/h2/\"}\n  route: {cluster: h2_app}\n- match: {prefix: \"/\"}\n  route: {cluster: h1_app}",
            &[("h1_app", h1_app.port(), false), ("h2_app", h2_app.port(), true)],
        ),
    );
    for (path, upstream) in [("/load", &h1_app), ("/h2/load", &h2_app)] {
        let output = run_tool(
            Command::new(&h2load)
                .args(["-n", "2000", "-c", "4", "-m", "10"])
                .arg(keel.url(path)),
        );
        let requests = output
            .lines()
            .find(|l| l.starts_with("requests:"))
            .unwrap_or_else(|| panic!("h2load printed no requests line:\n{output}"));
        assert!(
            requests.contains("2000 total") && requests.contains("2000 succeeded"),
            "{path}: {requests}\n{output}"
        );
        let codes = output
            .lines()
            .find(|l| l.starts_with("status codes:"))
            .unwrap_or_else(|| panic!("h2load printed no status codes:\n{output}"));
        assert!(
            codes.contains("2000 2xx") && codes.contains(" 0 5xx"),
            "{path}: {codes}"
        );
        assert_eq!(
            upstream.take_records().len(),
            2000,
            "{path}: all reached the upstream"
        );
    }
}

/// The SETTINGS keel sends an HTTP/2 client are the connection manager's
/// `http2_protocol_options`, as nghttp reports them.
#[test]
fn nghttp_sees_the_configured_http2_settings() {
    let nghttp = tool("nghttp", "nghttp2-client");
    let app = Upstream::start("app");
    let keel = Keel::start(
        "settings",
        &bootstrap(
            H2_OPTIONS,
            "- match: {prefix: \"/\"}\n  route: {cluster: app}",
            &[("app", app.port(), false)],
        ),
    );
    let output = run_tool(Command::new(&nghttp).args(["-v", "-n"]).arg(keel.url("/")));
    let settings = received_frame(&output, "SETTINGS");
    assert!(
        settings.contains("[SETTINGS_MAX_CONCURRENT_STREAMS(0x03):7]"),
        "{settings}"
    );
    assert!(
        settings.contains("[SETTINGS_INITIAL_WINDOW_SIZE(0x04):131072]"),
        "{settings}"
    );
    // The connection window starts at 65535 and is raised by a WINDOW_UPDATE on
    // stream 0.
    let update = received_frame(&output, "WINDOW_UPDATE");
    assert!(update.contains("stream_id=0"), "{update}");
    let increment: u32 = update
        .split("window_size_increment=")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no increment in {update}"));
    assert_eq!(65535 + increment, 1_048_576, "{update}");
    assert!(output.contains(":status: 200"), "{output}");
}

/// The first received frame of `kind` in nghttp's `-v` output, with its detail lines.
fn received_frame(output: &str, kind: &str) -> String {
    let mut lines = output
        .lines()
        .skip_while(|l| !l.contains(&format!("recv {kind} frame")));
    let first = lines
        .next()
        .unwrap_or_else(|| panic!("nghttp received no {kind} frame:\n{output}"));
    let mut frame = first.to_string();
    for line in lines.take_while(|l| !l.starts_with('[')) {
        frame.push('\n');
        frame.push_str(line);
    }
    frame
}

// ---------------------------------------------------------------------------------------
// gRPC.

#[test]
fn grpc_client_and_server_through_keel() {
    let python = venv_python();
    let server = PeerServer::start("grpc_peer.py");
    let keel = Keel::start(
        "grpc",
        &bootstrap(
            "",
            "- match: {prefix: \"/\", grpc: {}, headers: [{name: x-keel-deadline, present_match: true}]}
  route:
    cluster: grpc_app
    max_stream_duration: {grpc_timeout_header_max: 0s, grpc_timeout_header_offset: 1.7s}
- match: {prefix: \"/\", grpc: {}}
  route: {cluster: grpc_app}",
            &[("grpc_app", server.port, true)],
        ),
    );
    let output = run_tool(
        Command::new(&python)
            .arg(peer_script("grpc_peer.py"))
            .arg("client")
            .arg(keel.port.to_string()),
    );
    let seen: serde_json::Value = serde_json::from_str(output.trim())
        .unwrap_or_else(|e| panic!("grpc client printed {output:?}: {e}"));

    let unary = &seen["unary"];
    assert_eq!(unary["code"], "OK", "{seen}");
    assert_eq!(unary["reply"], "echo:ping");
    assert_eq!(
        unary["initial"]["x-initial"], "hello",
        "initial metadata: {unary}"
    );
    assert_eq!(unary["trailing"]["x-trailer"], "bye", "trailers: {unary}");
    assert_eq!(
        unary["trailing"]["x-seen-client"], "python",
        "client metadata reached the server: {unary}"
    );
    // The client's deadline (10 s) reached the server as grpc-timeout.
    let deadline_ms: u64 = unary["trailing"]["x-seen-deadline-ms"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("the server saw no deadline: {unary}"));
    assert!((5_000..=10_500).contains(&deadline_ms), "{unary}");

    assert_eq!(
        seen["big_unary_ok"], true,
        "a 3 MB message each way: {}",
        seen["big_unary_ok"]
    );
    assert_eq!(
        seen["server_stream"],
        serde_json::json!(["item-0", "item-1", "item-2", "item-3", "item-4"])
    );
    assert_eq!(seen["client_stream"], "3:abbccc");
    assert_eq!(seen["bidi"], serde_json::json!(["ONE", "TWO", "THREE"]));
    assert_eq!(seen["fail"]["code"], "NOT_FOUND", "{seen}");
    assert_eq!(seen["fail"]["details"], "no such thing");

    let deadline = &seen["deadline"];
    assert_eq!(deadline["code"], "DEADLINE_EXCEEDED", "{deadline}");
    let elapsed = deadline["elapsed_ms"].as_u64().unwrap();
    assert!(
        (250..2_000).contains(&elapsed),
        "a 300 ms deadline took {elapsed} ms"
    );
    // keel honours grpc-timeout: it answered DEADLINE_EXCEEDED itself, well before
    // the client's own 2 s deadline (the route takes 1.7 s off it).
    let keel_deadline = &seen["keel_deadline"];
    assert_eq!(
        keel_deadline["code"], "DEADLINE_EXCEEDED",
        "{keel_deadline}"
    );
    assert_eq!(
        keel_deadline["details"], "downstream duration timeout",
        "keel's reply, not the client's own deadline: {keel_deadline}"
    );
    let elapsed = keel_deadline["elapsed_ms"].as_u64().unwrap();
    assert!(
        (250..1_800).contains(&elapsed),
        "2 s less 1.7 s took {elapsed} ms"
    );
    assert!(
        seen["upstream_cancelled"].as_u64().unwrap() >= 1,
        "keel passed the cancellation on to the server: {seen}"
    );

    let lines = keel.access_log_lines(8);
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("POST /keel.test.Echo/Bidi HTTP/2 200")),
        "{lines:#?}"
    );
}

// ---------------------------------------------------------------------------------------
// WebSocket.

#[test]
fn websocket_client_and_echo_server_through_keel() {
    let python = venv_python();
    let server = PeerServer::start("ws_peer.py");
    let keel = Keel::start(
        "websocket",
        &bootstrap(
            "upgrade_configs:\n- upgrade_type: websocket",
            "- match: {prefix: \"/\"}\n  route: {cluster: ws_app}",
            &[("ws_app", server.port, false)],
        ),
    );
    let output = run_tool(
        Command::new(&python)
            .arg(peer_script("ws_peer.py"))
            .arg("client")
            .arg(format!("ws://127.0.0.1:{}/chat?room=1", keel.port)),
    );
    let seen: serde_json::Value = serde_json::from_str(output.trim())
        .unwrap_or_else(|e| panic!("websocket client printed {output:?}: {e}"));
    assert_eq!(seen["response_status"], 101, "{seen}");
    assert_eq!(seen["text"], "hello through keel");
    assert_eq!(seen["binary_ok"], true);
    assert_eq!(seen["big_ok"], true, "a 300 kB message came back whole");
    assert_eq!(seen["close_code"], 1000, "closed cleanly");
    assert!(
        seen["response_headers"]
            .get("x-envoy-upstream-service-time")
            .is_none(),
        "no service time on a 101, as Envoy: {seen}"
    );
    let upstream = &seen["upstream"];
    assert_eq!(upstream["path"], "/chat?room=1");
    let headers = &upstream["headers"];
    assert_eq!(headers["upgrade"], "websocket", "{upstream}");
    assert!(headers["sec-websocket-key"].is_string(), "{upstream}");
    assert_eq!(headers["x-forwarded-proto"], "http", "{upstream}");
    assert!(headers["x-request-id"].is_string(), "{upstream}");

    // The upgraded stream is logged when it ends, with the bytes of both directions.
    let lines = keel.access_log_lines(1);
    assert_eq!(lines.len(), 1, "{lines:?}");
    let fields: Vec<&str> = lines[0].split(' ').collect();
    assert_eq!(
        &fields[..4],
        ["GET", "/chat?room=1", "HTTP/1.1", "101"],
        "{}",
        lines[0]
    );
    let received: u64 = fields[5].parse().unwrap();
    let sent: u64 = fields[6].parse().unwrap();
    assert!(
        received > 300_000 && sent > 300_000,
        "the upgraded bytes are counted: {}",
        lines[0]
    );
}

// ---------------------------------------------------------------------------------------
// HTTP/2 max_concurrent_streams, against Envoy.

/// A client that opens more streams than keel's SETTINGS allow (after acknowledging
/// them) gets the excess streams refused with RST_STREAM REFUSED_STREAM (RFC 9113
/// §5.1.2; a client may retry them) while the others are served; none of the refused
/// ones reaches the upstream. Envoy 1.40, run alongside, enforces the same limit more
/// bluntly: it closes the whole connection (a documented difference).
#[test]
fn h2_streams_beyond_max_concurrent_streams_are_refused() {
    let app = Upstream::start("app");
    let config = bootstrap(
        "http2_protocol_options: {max_concurrent_streams: 4}",
        "- match: {prefix: \"/\"}\n  route: {cluster: app}",
        &[("app", app.port(), false)],
    );
    let mut outcomes = Vec::new();
    for envoy in [true, false] {
        let proxy = Keel::start_program(
            if envoy {
                "streams-envoy"
            } else {
                "streams-keel"
            },
            &config,
            envoy,
        );
        let outcome = raw_h2::open_streams(proxy.addr(), 7, 300);
        let reached = app.take_records().len();
        outcomes.push((outcome, reached));
    }
    let ((envoy, envoy_reached), (keel, keel_reached)) = (&outcomes[0], &outcomes[1]);
    eprintln!("envoy: {envoy:?}, {envoy_reached} at the upstream");
    eprintln!("keel:  {keel:?}, {keel_reached} at the upstream");
    assert_eq!(envoy.max_concurrent_streams, Some(4), "{envoy:?}");
    assert!(
        envoy.served <= 4 && *envoy_reached <= 4,
        "Envoy enforces the limit too: {envoy:?}"
    );

    assert_eq!(keel.max_concurrent_streams, Some(4), "{keel:?}");
    assert_eq!(keel.served, 4, "the first 4 streams are served: {keel:?}");
    assert_eq!(
        keel.resets.get(&raw_h2::REFUSED_STREAM),
        Some(&3),
        "the 3 excess streams are refused: {keel:?}"
    );
    assert_eq!(keel.goaway, None, "the connection stays up: {keel:?}");
    assert_eq!(*keel_reached, 4, "refused streams never reach the upstream");
}

/// Just enough HTTP/2 to open streams without regard for the peer's limits.
mod raw_h2 {
    use std::collections::BTreeMap;
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpStream};
    use std::time::{Duration, Instant};

    const DATA: u8 = 0;
    const HEADERS: u8 = 1;
    const RST_STREAM: u8 = 3;
    const SETTINGS: u8 = 4;
    const GOAWAY: u8 = 7;
    const END_STREAM: u8 = 1;
    const ACK: u8 = 1;
    const END_HEADERS: u8 = 4;
    /// The RST_STREAM error code of a stream the server did not process.
    pub const REFUSED_STREAM: u32 = 7;

    /// What became of the streams.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Outcome {
        /// SETTINGS_MAX_CONCURRENT_STREAMS of the server, if it sent one.
        pub max_concurrent_streams: Option<u32>,
        /// Streams answered with response headers.
        pub served: usize,
        /// RST_STREAM error codes received, and how many of each.
        pub resets: BTreeMap<u32, usize>,
        /// GOAWAY error code, if one came.
        pub goaway: Option<u32>,
    }

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    /// HPACK "literal header field without indexing, new name", no Huffman.
    fn literal(out: &mut Vec<u8>, name: &str, value: &str) {
        out.push(0);
        out.push(name.len() as u8);
        out.extend_from_slice(name.as_bytes());
        out.push(value.len() as u8);
        out.extend_from_slice(value.as_bytes());
    }

    fn read_frame(stream: &mut TcpStream) -> Option<(u8, u8, u32, Vec<u8>)> {
        let mut head = [0u8; 9];
        if let Err(e) = stream.read_exact(&mut head) {
            if std::env::var_os("KEEL_RAW_H2_DEBUG").is_some() {
                eprintln!("raw h2: read: {e}");
            }
            return None;
        }
        let len = (usize::from(head[0]) << 16) | (usize::from(head[1]) << 8) | usize::from(head[2]);
        let id = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let mut payload = vec![0u8; len];
        stream.read_exact(&mut payload).ok()?;
        Some((head[3], head[4], id, payload))
    }

    /// Connects, exchanges SETTINGS (both acknowledged), then opens `count` GET
    /// streams at once (the upstream answers each after `delay_ms`), and reads until
    /// every stream is answered or reset, a GOAWAY, or 10 s.
    pub fn open_streams(addr: SocketAddr, count: u32, delay_ms: u32) -> Outcome {
        let mut stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        hello.extend(frame(SETTINGS, 0, 0, &[]));
        stream.write_all(&hello).unwrap();
        let mut outcome = Outcome {
            max_concurrent_streams: None,
            served: 0,
            resets: BTreeMap::new(),
            goaway: None,
        };
        let (mut got_settings, mut got_ack) = (false, false);
        while !(got_settings && got_ack) {
            let (kind, flags, _, payload) = read_frame(&mut stream).expect("server SETTINGS");
            if kind != SETTINGS {
                continue;
            }
            if flags & ACK != 0 {
                got_ack = true;
            } else {
                got_settings = true;
                for setting in payload.chunks_exact(6) {
                    if u16::from_be_bytes([setting[0], setting[1]]) == 3 {
                        outcome.max_concurrent_streams = Some(u32::from_be_bytes([
                            setting[2], setting[3], setting[4], setting[5],
                        ]));
                    }
                }
                stream.write_all(&frame(SETTINGS, ACK, 0, &[])).unwrap();
            }
        }
        let mut burst = Vec::new();
        for i in 0..count {
            let mut block = Vec::new();
            literal(&mut block, ":method", "GET");
            literal(&mut block, ":scheme", "http");
            literal(&mut block, ":path", &format!("/stream/{i}"));
            literal(&mut block, ":authority", "streams.local");
            literal(&mut block, "x-test-delay-ms", &delay_ms.to_string());
            burst.extend(frame(HEADERS, END_HEADERS | END_STREAM, 1 + 2 * i, &block));
        }
        stream.write_all(&burst).unwrap();
        let mut done = std::collections::BTreeSet::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while done.len() < count as usize && Instant::now() < deadline {
            let Some((kind, flags, id, payload)) = read_frame(&mut stream) else {
                eprintln!("raw h2: connection ended");
                break;
            };
            if std::env::var_os("KEEL_RAW_H2_DEBUG").is_some() {
                eprintln!(
                    "raw h2: frame type {kind} flags {flags:#x} stream {id} {}",
                    payload.len()
                );
            }
            match kind {
                HEADERS if id != 0 => {
                    outcome.served += 1;
                    if flags & END_STREAM != 0 {
                        done.insert(id);
                    }
                }
                DATA if flags & END_STREAM != 0 => {
                    done.insert(id);
                }
                RST_STREAM if payload.len() == 4 => {
                    let code = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]);
                    *outcome.resets.entry(code).or_default() += 1;
                    done.insert(id);
                }
                GOAWAY if payload.len() >= 8 => {
                    outcome.goaway = Some(u32::from_be_bytes([
                        payload[4], payload[5], payload[6], payload[7],
                    ]));
                    break;
                }
                _ => {}
            }
        }
        outcome
    }
}

/// An upgraded (websocket) stream is subject to the stream idle timeout, as in Envoy:
/// keel and Envoy 1.40 on the same bootstrap both close a websocket that stays silent
/// for `stream_idle_timeout`, and log it the same way.
#[test]
fn idle_websocket_is_closed_by_the_stream_idle_timeout_like_envoy() {
    let python = venv_python();
    let server = PeerServer::start("ws_peer.py");
    let config = bootstrap(
        "upgrade_configs:\n- upgrade_type: websocket\nstream_idle_timeout: 1s",
        "- match: {prefix: \"/\"}\n  route: {cluster: ws_app}",
        &[("ws_app", server.port, false)],
    );
    let mut seen = Vec::new();
    for envoy in [true, false] {
        let proxy = Keel::start_program(
            if envoy {
                "ws-idle-envoy"
            } else {
                "ws-idle-keel"
            },
            &config,
            envoy,
        );
        let output = run_tool(
            Command::new(&python)
                .arg(peer_script("ws_peer.py"))
                .arg("idle-client")
                .arg(format!("ws://127.0.0.1:{}/idle", proxy.port))
                .arg("4"),
        );
        let outcome: serde_json::Value = serde_json::from_str(output.trim())
            .unwrap_or_else(|e| panic!("websocket client printed {output:?}: {e}"));
        let line = proxy.access_log_lines(1).join("\n");
        seen.push((outcome, line));
    }
    let ((envoy, envoy_log), (keel, keel_log)) = (&seen[0], &seen[1]);
    eprintln!("envoy: {envoy} {envoy_log}\nkeel:  {keel} {keel_log}");
    assert_eq!(
        envoy["closed"], true,
        "Envoy closes the idle websocket: {envoy}"
    );
    assert_eq!(
        keel["closed"], true,
        "keel closes the idle websocket: {keel}"
    );
    let idle = keel["idle_ms"].as_u64().unwrap();
    assert!(
        (800..3_000).contains(&idle),
        "closed after {idle} ms of silence"
    );
    // Same line but for the byte counts' exact values.
    let shape =
        |line: &str| -> Vec<String> { line.split(' ').take(5).map(str::to_string).collect() };
    assert_eq!(
        shape(keel_log),
        shape(envoy_log),
        "keel: {keel_log}\nenvoy: {envoy_log}"
    );
}

/// An upstream that answers as soon as it has a request's head, without reading its
/// body: `HTTP/1.1 200` with a 2-byte body, then it drains what comes.
fn early_answering_upstream() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the early upstream");
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for connection in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut connection = connection;
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match connection.read(&mut byte) {
                        Ok(1) => head.push(byte[0]),
                        _ => return,
                    }
                }
                let _ = connection.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-type: text/plain\r\n\r\nok",
                );
                let mut sink = [0u8; 16 * 1024];
                while matches!(connection.read(&mut sink), Ok(n) if n > 0) {}
            });
        }
    });
    port
}

/// Sends an HTTP/1.1 POST announcing `announced` body bytes but sending only a few,
/// and returns the response head keel or Envoy sends before the body is complete.
fn early_response_head(addr: SocketAddr, announced: usize) -> String {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let request = format!(
        "POST /early HTTP/1.1\r\nhost: early.local\r\ncontent-length: {announced}\r\n\r\nfirst bytes"
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            other => panic!(
                "no response head ({other:?}): {}",
                String::from_utf8_lossy(&head)
            ),
        }
    }
    String::from_utf8_lossy(&head).to_lowercase()
}

/// An upstream response that arrives while the HTTP/1.1 request body is still coming
/// closes the downstream connection (`connection: close`) and has no
/// x-envoy-upstream-service-time, in keel as in Envoy 1.40.
#[test]
fn response_before_the_request_body_ends_closes_the_connection_like_envoy() {
    let port = early_answering_upstream();
    let config = bootstrap(
        "",
        "- match: {prefix: \"/\"}\n  route: {cluster: early}",
        &[("early", port, false)],
    );
    let mut heads = Vec::new();
    for envoy in [true, false] {
        let proxy = Keel::start_program(
            if envoy { "early-envoy" } else { "early-keel" },
            &config,
            envoy,
        );
        heads.push(early_response_head(proxy.addr(), 1_000_000));
    }
    let (envoy, keel) = (&heads[0], &heads[1]);
    eprintln!("envoy:\n{envoy}\nkeel:\n{keel}");
    let closes = |head: &str| head.contains("\r\nconnection: close\r\n");
    assert!(
        head_status(envoy) == 200 && head_status(keel) == 200,
        "{envoy}\n{keel}"
    );
    assert!(closes(envoy), "Envoy closes: {envoy}");
    assert!(closes(keel), "keel closes: {keel}");
    // No x-envoy-upstream-service-time either: it counts from the request's end.
    let names = |head: &str| -> std::collections::BTreeSet<String> {
        head.lines()
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .map(|(name, _)| name.to_string())
            .collect()
    };
    assert_eq!(names(keel), names(envoy), "envoy:\n{envoy}\nkeel:\n{keel}");
}

fn head_status(head: &str) -> u16 {
    head.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}
