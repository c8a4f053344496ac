//! The `keel` binary: Envoy's `--mode validate` on good and bad bootstraps (cases in
//! tests/configs/cases.json), and serving a kernel-balanced config until SIGTERM.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use keel_tests::{keel_binary, Sandbox};

#[test]
fn validate_mode_accepts_good_configs_and_names_the_field_of_bad_ones() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
    let cases: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).unwrap()).unwrap();
    assert!(cases.len() >= 5);
    for case in cases {
        let file = dir.join(case["file"].as_str().unwrap());
        let output = Command::new(keel_binary())
            .args(["--mode", "validate", "-c"])
            .arg(&file)
            .output()
            .expect("run keel");
        let stderr = String::from_utf8_lossy(&output.stderr);
        match case["error"].as_str() {
            None => {
                assert!(
                    output.status.success(),
                    "{}: expected OK, got: {stderr}",
                    file.display()
                );
                assert!(String::from_utf8_lossy(&output.stdout).contains("OK"));
            }
            Some(expected) => {
                assert_eq!(
                    output.status.code(),
                    Some(1),
                    "{}: expected exit 1; stderr: {stderr}",
                    file.display()
                );
                assert!(
                    stderr.contains(expected),
                    "{}: expected {expected:?} in: {stderr}",
                    file.display()
                );
            }
        }
    }
}

#[test]
fn version_flag_prints_the_version() {
    let output = Command::new(keel_binary())
        .arg("--version")
        .output()
        .expect("run keel");
    assert!(output.status.success());
    assert!(String::from_utf8_lossy(&output.stdout).contains(env!("CARGO_PKG_VERSION")));
}

#[test]
#[ignore = "needs root, eBPF and network namespaces: run `cargo xtask test` as root"]
fn keel_serves_a_kernel_config_and_detaches_on_sigterm() {
    let sandbox = Sandbox::new("serve");
    sandbox.tcp_backend("b1", "127.0.0.1:9001");
    sandbox.tcp_backend("decoy", "127.0.0.100:8080");
    let config = keel_tests::kernel_config(&[(
        "svc",
        "127.0.0.100:8080",
        "ROUND_ROBIN",
        &[("127.0.0.1", 9001, 1)],
    )]);
    let config_path = std::env::temp_dir().join(format!("{}.yaml", sandbox.netns));
    std::fs::write(&config_path, config).unwrap();

    let mut keel = Command::new(keel_binary())
        .arg("-c")
        .arg(&config_path)
        .arg("--cgroup")
        .arg(&sandbox.cgroup)
        .arg("--bpffs")
        .arg(&sandbox.bpffs)
        .env("RUST_BACKTRACE", "0")
        .stderr(Stdio::piped())
        .spawn()
        .expect("start keel");
    let mut log = BufReader::new(keel.stderr.take().unwrap()).lines();
    wait_until_serving(&mut log);
    let seen = sandbox.exchanges(true, &["--to", "127.0.0.100:8080", "--count", "2"]);
    assert!(seen.iter().all(|e| e.backend == "b1"), "{seen:?}");

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(keel.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = keel.wait().unwrap();
    let rest: Vec<String> = log.map_while(Result::ok).collect();
    assert!(
        status.success(),
        "keel exits 0 on SIGTERM: {status}; its log:\n{}",
        rest.join("\n")
    );
    let seen = sandbox.exchanges(true, &["--to", "127.0.0.100:8080"]);
    assert_eq!(seen[0].backend, "decoy", "hooks are detached after exit");
    let _ = std::fs::remove_file(config_path);
}

/// Reads keel's log until it says it is serving (30 s at most).
fn wait_until_serving(log: &mut impl Iterator<Item = std::io::Result<String>>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    for line in log {
        if line.expect("read keel's log").contains("keel is serving") {
            return;
        }
        assert!(Instant::now() < deadline, "keel did not start within 30 s");
    }
    panic!("keel exited before serving");
}

/// Starts keel as an unprivileged user inside the sandbox's namespace, returns it
/// with its stderr lines.
fn start_unprivileged_keel(
    sandbox: &Sandbox,
    config: &str,
) -> (
    std::process::Child,
    std::io::Lines<BufReader<std::process::ChildStderr>>,
) {
    let config_path = std::env::temp_dir().join(format!("{}.yaml", sandbox.netns));
    std::fs::write(&config_path, config).unwrap();
    let mut keel = Command::new("ip")
        .args([
            "netns",
            "exec",
            &sandbox.netns,
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
        ])
        .arg(keel_binary())
        .arg("-c")
        .arg(&config_path)
        .env("RUST_BACKTRACE", "0")
        .stderr(Stdio::piped())
        .spawn()
        .expect("start keel");
    let log = BufReader::new(keel.stderr.take().unwrap()).lines();
    (keel, log)
}

#[test]
#[ignore = "needs root, eBPF and network namespaces: run `cargo xtask test` as root"]
fn without_privileges_keel_exits_with_the_reason_or_falls_back_to_userspace() {
    let sandbox = Sandbox::new("fallback");
    sandbox.tcp_backend("b1", "127.0.0.1:9001");
    let service = keel_tests::kernel_config(&[(
        "svc",
        "127.0.0.100:18080",
        "ROUND_ROBIN",
        &[("127.0.0.1", 9001, 1)],
    )]);

    // Default: FAIL, with the reason and what to do.
    let (mut keel, log) = start_unprivileged_keel(&sandbox, &service);
    let status = keel.wait().unwrap();
    let text: Vec<String> = log.map_while(Result::ok).collect();
    let text = text.join("\n");
    assert_eq!(status.code(), Some(1), "keel must fail: {text}");
    assert!(
        text.contains("needs root") && text.contains("on_unavailable: USERSPACE"),
        "{text}"
    );

    // on_unavailable: USERSPACE serves the listener with the userspace tcp_proxy.
    let fallback = format!(
        "bootstrap_extensions:\n- name: keel.datapath\n  typed_config:\n    \"@type\": type.googleapis.com/keel.v1.Datapath\n    on_unavailable: USERSPACE\n{service}"
    );
    let (mut keel, mut log) = start_unprivileged_keel(&sandbox, &fallback);
    wait_until_serving(&mut log);
    // Any client, in the cgroup or not, reaches the backend through keel's userspace proxy.
    let seen = sandbox.exchanges(false, &["--to", "127.0.0.100:18080", "--count", "3"]);
    assert!(seen.iter().all(|e| e.backend == "b1"), "{seen:?}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(keel.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(keel.wait().unwrap().success());
}
