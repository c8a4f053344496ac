//! `keel-probe`: a client for keel's end-to-end tests.
//!
//! It joins a cgroup and a network namespace (in that order: entering a namespace
//! with `ip netns exec` would hide /sys/fs/cgroup), then opens connections or sends
//! datagrams and prints one JSON line per exchange: which backend answered and the
//! peer address the application saw. With `--hold` it keeps its connections open
//! until its standard input closes.

use std::io::{BufRead, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use nix::sys::socket::{self, sockopt, SockFlag, SockType, SockaddrStorage};

#[derive(Parser)]
struct Args {
    /// cgroup v2 folder to join first.
    #[arg(long)]
    cgroup: Option<PathBuf>,
    /// Network namespace (name under /var/run/netns) to enter.
    #[arg(long)]
    netns: Option<String>,
    /// Where to connect or send.
    #[arg(long)]
    to: SocketAddr,
    /// Number of connections or datagrams.
    #[arg(long, default_value_t = 1)]
    count: usize,
    /// Keep the connections open until stdin closes.
    #[arg(long)]
    hold: bool,
    /// Bind each socket to this source first (`ip:port`); with `--sources N` the last
    /// octet of an IPv4 source is incremented per connection.
    #[arg(long)]
    bind: Option<SocketAddr>,
    /// Close with RST (SO_LINGER 0) so that a source address can be reused at once.
    #[arg(long)]
    reset: bool,
    /// Use unconnected UDP (sendto/recvfrom) instead of TCP.
    #[arg(long)]
    udp: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(cgroup) = &args.cgroup {
        std::fs::write(cgroup.join("cgroup.procs"), std::process::id().to_string())
            .with_context(|| format!("joining {}", cgroup.display()))?;
    }
    if let Some(netns) = &args.netns {
        let file = std::fs::File::open(format!("/var/run/netns/{netns}"))
            .with_context(|| format!("opening netns {netns}"))?;
        nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
            .with_context(|| format!("entering netns {netns}"))?;
    }
    if args.udp {
        return udp(&args);
    }
    let mut held = Vec::new();
    let stdout = std::io::stdout();
    for i in 0..args.count {
        let source = args.bind.map(|b| nth_source(b, i));
        let result = exchange(&args, source);
        let line = match &result {
            Ok((backend, peer, _)) => {
                serde_json::json!({"backend": backend, "peer": peer.to_string()})
            }
            Err(e) => serde_json::json!({"error": format!("{e:#}")}),
        };
        writeln!(stdout.lock(), "{line}")?;
        if let Ok((_, _, stream)) = result {
            if args.hold {
                held.push(stream);
            }
        }
    }
    stdout.lock().flush()?;
    if args.hold {
        // Wait for the test to close our stdin (or write a line).
        let _ = std::io::stdin().lock().lines().next();
    }
    drop(held);
    Ok(())
}

/// The `i`-th source: the last IPv4 octet plus `i`.
fn nth_source(base: SocketAddr, i: usize) -> SocketAddr {
    match base {
        SocketAddr::V4(v4) => {
            let mut octets = v4.ip().octets();
            octets[3] = octets[3].wrapping_add(i as u8);
            SocketAddr::from((octets, v4.port()))
        }
        v6 => v6,
    }
}

/// Connects (optionally from `source`), reads the backend's greeting line.
fn exchange(
    args: &Args,
    source: Option<SocketAddr>,
) -> anyhow::Result<(String, SocketAddr, TcpStream)> {
    let family = if args.to.is_ipv4() {
        socket::AddressFamily::Inet
    } else {
        socket::AddressFamily::Inet6
    };
    let fd = socket::socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    if let Some(source) = source {
        socket::setsockopt(&fd, sockopt::ReuseAddr, &true)?;
        socket::bind(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            &SockaddrStorage::from(source),
        )
        .with_context(|| format!("binding {source}"))?;
    }
    if args.reset {
        socket::setsockopt(&fd, sockopt::Linger, &libc_linger_zero())?;
    }
    socket::connect(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrStorage::from(args.to),
    )
    .with_context(|| format!("connecting to {}", args.to))?;
    let mut stream = TcpStream::from(fd);
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let peer = stream.peer_addr()?;
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while stream.read(&mut byte)? == 1 && byte[0] != b'\n' {
        line.push(byte[0]);
    }
    Ok((String::from_utf8_lossy(&line).into_owned(), peer, stream))
}

fn libc_linger_zero() -> nix::libc::linger {
    nix::libc::linger {
        l_onoff: 1,
        l_linger: 0,
    }
}

/// Sends `count` datagrams on one unconnected socket; prints who answered and the
/// source address recvfrom() reported.
fn udp(args: &Args) -> anyhow::Result<()> {
    let local: SocketAddr = if args.to.is_ipv4() {
        "0.0.0.0:0".parse()?
    } else {
        "[::]:0".parse()?
    };
    let socket = UdpSocket::bind(args.bind.unwrap_or(local))?;
    socket.set_read_timeout(Some(Duration::from_secs(5)))?;
    let stdout = std::io::stdout();
    for _ in 0..args.count {
        socket.send_to(b"ping", args.to)?;
        let mut buf = [0u8; 256];
        let line = match socket.recv_from(&mut buf) {
            Ok((n, from)) => serde_json::json!({
                "backend": String::from_utf8_lossy(&buf[..n]).trim().to_string(),
                "peer": from.to_string(),
            }),
            Err(e) => serde_json::json!({"error": e.to_string()}),
        };
        writeln!(stdout.lock(), "{line}")?;
    }
    Ok(())
}
