//! Build script for keel.
//!
//! 1. Compiles the descriptor pool keel parses configuration with: Envoy's v3 API
//!    (the .proto files shipped by the `envoy-types` crate) plus keel's own messages
//!    under `proto/keel`. Parsing by descriptor gives the proto3 JSON mapping (Any by
//!    "@type", durations, enums by name, camelCase and snake_case) for free.
//! 2. Embeds the eBPF object named by `KEEL_EBPF_OBJECT` (set by `cargo xtask build`).
//!    Without it, keel is built without its kernel path and says so at start-up.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The Envoy API roots keel understands; their imports come along.
const ENVOY_ROOTS: &[&str] = &[
    "envoy/config/bootstrap/v3/bootstrap.proto",
    "envoy/extensions/filters/network/tcp_proxy/v3/tcp_proxy.proto",
    "envoy/extensions/filters/network/http_connection_manager/v3/http_connection_manager.proto",
    "envoy/extensions/filters/http/router/v3/router.proto",
    "envoy/extensions/access_loggers/file/v3/file.proto",
    "envoy/extensions/access_loggers/stream/v3/stream.proto",
    "envoy/extensions/upstreams/http/v3/http_protocol_options.proto",
    "envoy/extensions/retry/host/previous_hosts/v3/previous_hosts.proto",
    "envoy/extensions/network/dns_resolver/cares/v3/cares_dns_resolver.proto",
    "envoy/extensions/filters/listener/tls_inspector/v3/tls_inspector.proto",
    "envoy/extensions/filters/listener/http_inspector/v3/http_inspector.proto",
];

/// Include folders inside the envoy-types package.
const ENVOY_INCLUDES: &[&str] = &[
    "data-plane-api",
    "xds",
    "protoc-gen-validate",
    "googleapis",
    "cel-spec/proto",
    "opentelemetry-proto",
    "client_model",
];

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR is set by cargo"));
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    compile_descriptors(&manifest, &out);
    embed_ebpf_object(&out);
}

fn compile_descriptors(manifest: &Path, out: &Path) {
    let keel_proto = manifest.join("../proto");
    println!("cargo:rerun-if-changed={}", keel_proto.display());
    let envoy_proto = envoy_types_dir(manifest).join("proto");
    let mut includes: Vec<PathBuf> = ENVOY_INCLUDES.iter().map(|d| envoy_proto.join(d)).collect();
    includes.push(keel_proto.clone());

    let mut files: Vec<String> = ENVOY_ROOTS.iter().map(|s| s.to_string()).collect();
    for entry in walk(&keel_proto) {
        if entry.extension().is_some_and(|e| e == "proto") {
            let rel = entry.strip_prefix(&keel_proto).expect("under proto/");
            files.push(rel.to_string_lossy().into_owned());
        }
    }
    let fds = protox::compile(&files, &includes)
        .unwrap_or_else(|e| panic!("compiling the .proto files failed: {e:?}"));
    let bytes = prost::Message::encode_to_vec(&fds);
    std::fs::write(out.join("descriptors.bin"), &bytes).expect("write descriptors.bin");

    // Rust types for keel's own messages (the Envoy ones come from envoy-types).
    let own: Vec<_> = files
        .iter()
        .filter(|f| f.starts_with("keel/"))
        .cloned()
        .collect();
    let mut cfg = prost_build::Config::new();
    cfg.skip_protoc_run();
    let own_fds = prost_types_subset(&fds, &own);
    cfg.compile_fds(own_fds)
        .expect("generate Rust for proto/keel");
}

/// The descriptor set restricted to the given files (prost-build generates code for
/// every file it is handed).
fn prost_types_subset(
    fds: &prost_types::FileDescriptorSet,
    files: &[String],
) -> prost_types::FileDescriptorSet {
    prost_types::FileDescriptorSet {
        file: fds
            .file
            .iter()
            .filter(|f| f.name.as_ref().is_some_and(|n| files.contains(n)))
            .cloned()
            .collect(),
    }
}

/// Finds the envoy-types package folder through `cargo metadata`.
fn envoy_types_dir(manifest: &Path) -> PathBuf {
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // Filtering to the host platform keeps cargo from fetching other platforms' crates.
    let target = env::var("TARGET").expect("TARGET is set by cargo");
    let output = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--filter-platform",
            &target,
        ])
        .current_dir(manifest)
        .output()
        .expect("run cargo metadata");
    assert!(
        output.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&output.stdout).expect("metadata JSON");
    let manifest_path = meta["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .find(|p| p["name"] == "envoy-types")
        .and_then(|p| p["manifest_path"].as_str())
        .expect("envoy-types is a dependency of keel");
    Path::new(manifest_path)
        .parent()
        .expect("package folder")
        .to_path_buf()
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(walk(&path));
        } else {
            found.push(path);
        }
    }
    found.sort();
    found
}

fn embed_ebpf_object(out: &Path) {
    println!("cargo:rerun-if-env-changed=KEEL_EBPF_OBJECT");
    println!("cargo::rustc-check-cfg=cfg(keel_ebpf)");
    let target = out.join("keel-ebpf.o");
    match env::var_os("KEEL_EBPF_OBJECT") {
        Some(path) => {
            let path = PathBuf::from(path);
            println!("cargo:rerun-if-changed={}", path.display());
            std::fs::copy(&path, &target).unwrap_or_else(|e| {
                panic!(
                    "KEEL_EBPF_OBJECT={}: cannot read the eBPF object: {e}",
                    path.display()
                )
            });
            println!("cargo:rustc-cfg=keel_ebpf");
        }
        None => std::fs::write(&target, []).expect("write empty eBPF placeholder"),
    }
}
