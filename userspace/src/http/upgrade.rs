//! Upgraded streams (websocket): once both sides have switched protocols, the
//! downstream and upstream connections are spliced byte for byte. The stream lives on
//! with them, as in Envoy: the stream idle timeout (or the route's `idle_timeout`)
//! still applies and ends both connections (flag `SI`), and the stream is logged when
//! the splice ends, with the bytes each way as its bytes received and sent and `DC`
//! when the downstream closed first.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::time::{Duration, Instant};

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::stream::{RequestState, StreamGuard};

/// Which side ended its direction first.
const DOWNSTREAM: u8 = 1;
const UPSTREAM: u8 = 2;

/// Splices the upgraded downstream connection with the upgraded upstream one on a
/// task of its own; `stream` ends when the splice does.
pub(crate) fn splice(downstream: OnUpgrade, upstream: OnUpgrade, mut stream: StreamGuard) {
    tokio::spawn(async move {
        let (downstream, upstream) = match tokio::try_join!(downstream, upstream) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!("upgrade failed: {e}");
                return; // Dropping the stream ends it.
            }
        };
        let idle = stream.timers.idle_timeout();
        let (mut down_read, mut down_write) = tokio::io::split(TokioIo::new(downstream));
        let (mut up_read, mut up_write) = tokio::io::split(TokioIo::new(upstream));
        let epoch = Instant::now();
        let activity = AtomicU64::new(0);
        let (received, sent) = (AtomicU64::new(0), AtomicU64::new(0));
        let closed_first = AtomicU8::new(0);
        let to_upstream = async {
            let _ = pump(&mut down_read, &mut up_write, &received, &activity, epoch).await;
            let _ =
                closed_first.compare_exchange(0, DOWNSTREAM, Ordering::Relaxed, Ordering::Relaxed);
            let _ = up_write.shutdown().await;
        };
        let to_downstream = async {
            let _ = pump(&mut up_read, &mut down_write, &sent, &activity, epoch).await;
            let _ =
                closed_first.compare_exchange(0, UPSTREAM, Ordering::Relaxed, Ordering::Relaxed);
            let _ = down_write.shutdown().await;
        };
        let both = async {
            tokio::join!(to_upstream, to_downstream);
        };
        let idled = match idle {
            None => {
                both.await;
                false
            }
            Some(idle) => tokio::select! {
                () = both => false,
                () = idle_expiry(idle, &activity, epoch) => true,
            },
        };

        let at = match stream.request {
            RequestState::Complete { at, .. } => at,
            RequestState::Pending(_) => Instant::now(),
        };
        stream.request = RequestState::Complete {
            bytes: received.load(Ordering::Relaxed),
            complete: true,
            at,
        };
        stream.info.bytes_sent += sent.load(Ordering::Relaxed);
        if idled {
            // Dropping the halves (when this task ends) closes both connections.
            stream.flag("SI");
            stream.conn.hcm.stats.downstream_rq_idle_timeout.inc();
            stream.finish(false);
        } else {
            stream.finish(closed_first.load(Ordering::Relaxed) != DOWNSTREAM);
        }
    });
}

/// Copies `from` to `to` until `from` ends or either fails, counting the bytes and
/// noting the time of the last activity (milliseconds since `epoch`).
async fn pump<R, W>(
    from: &mut R,
    to: &mut W,
    bytes: &AtomicU64,
    activity: &AtomicU64,
    epoch: Instant,
) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        to.write_all(&buf[..n]).await?;
        bytes.fetch_add(n as u64, Ordering::Relaxed);
        activity.store(epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

/// Resolves once nothing moved either way for `idle`.
async fn idle_expiry(idle: Duration, activity: &AtomicU64, epoch: Instant) {
    loop {
        let last = epoch + Duration::from_millis(activity.load(Ordering::Relaxed));
        let deadline = last + idle;
        if Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)).await;
    }
}
