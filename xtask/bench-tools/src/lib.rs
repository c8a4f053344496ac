//! Pieces shared by `bench-backend` and `bench-client`, the two programs `cargo xtask
//! bench` runs beside the proxies it measures: latency statistics (percentiles and the
//! percentile spectrum the report plots), the gRPC message framing, and a minimal
//! HTTP/1.1 response reader for the clients (which must cost little per request, so they
//! speak HTTP/1.1 over blocking sockets themselves instead of through a client library).

#![forbid(unsafe_code)]

use std::io::{self, Read};

use serde_json::{json, Value};

/// Largest body the backend serves (`/bytes/N`), and the largest the clients read.
pub const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// Percentiles every latency report carries, in percent.
pub const PERCENTILES: [f64; 6] = [50.0, 90.0, 99.0, 99.9, 99.99, 100.0];

/// Latency samples in microseconds, summarised.
#[derive(Debug, Clone, PartialEq)]
pub struct Latencies {
    sorted: Vec<u32>,
}

impl Latencies {
    /// Takes the samples (any order).
    pub fn new(mut samples: Vec<u32>) -> Latencies {
        samples.sort_unstable();
        Latencies { sorted: samples }
    }

    /// Number of samples.
    pub fn count(&self) -> usize {
        self.sorted.len()
    }

    /// The sample at percentile `p` (0–100) by the nearest-rank method; 0 without samples.
    pub fn percentile(&self, p: f64) -> u32 {
        if self.sorted.is_empty() {
            return 0;
        }
        // Less a hair, so that 99.9 % of 1000 is rank 999, not 1000 by rounding.
        let rank = ((p / 100.0) * self.sorted.len() as f64 - 1e-9).ceil() as usize;
        self.sorted[rank.clamp(1, self.sorted.len()) - 1]
    }

    /// Mean in microseconds.
    pub fn mean(&self) -> f64 {
        if self.sorted.is_empty() {
            return 0.0;
        }
        self.sorted.iter().map(|&s| f64::from(s)).sum::<f64>() / self.sorted.len() as f64
    }

    /// Points `(percentile, microseconds)` spaced evenly in `-log10(1 - p)` (the usual
    /// HdrHistogram-style x axis), from p50 up to the highest percentile the sample
    /// count resolves, then the maximum.
    pub fn spectrum(&self) -> Vec<(f64, u32)> {
        let mut points = Vec::new();
        if self.sorted.is_empty() {
            return points;
        }
        let resolvable = (self.sorted.len() as f64).log10();
        let steps = ((resolvable.min(5.0) * 10.0) + 1e-9).floor() as u32;
        for step in 0..=steps {
            let nines = f64::from(step) / 10.0;
            let p = 100.0 * (1.0 - 10f64.powf(-nines));
            points.push((p, self.percentile(p)));
        }
        points.push((100.0, self.percentile(100.0)));
        points
    }

    /// `{"count", "mean_us", "p50_us", …, "max_us"}`.
    pub fn to_json(&self) -> Value {
        let mut value = json!({ "count": self.count(), "mean_us": self.mean() });
        for p in PERCENTILES {
            value[percentile_key(p)] = json!(self.percentile(p));
        }
        value
    }
}

/// The JSON key of percentile `p`: `p50_us`, `p99_9_us`, `max_us`.
pub fn percentile_key(p: f64) -> String {
    if p >= 100.0 {
        return "max_us".to_string();
    }
    format!("p{}_us", format!("{p}").replace('.', "_"))
}

/// One gRPC message frame: uncompressed flag, 4-byte big-endian length, message.
pub fn grpc_frame(message: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(5 + message.len());
    frame.push(0);
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(message);
    frame
}

/// Reads one HTTP/1.1 response from `stream` (status line, headers, a body framed by
/// Content-Length or chunked), using `buffer` for what arrives; bytes past the response
/// stay in `buffer` for the next one. Returns the status code and the body length.
pub fn read_response(stream: &mut impl Read, buffer: &mut Vec<u8>) -> io::Result<(u16, usize)> {
    let head_end = loop {
        if let Some(end) = find(buffer, b"\r\n\r\n") {
            break end + 4;
        }
        fill(stream, buffer)?;
    };
    let head = std::str::from_utf8(&buffer[..head_end])
        .map_err(|_| invalid("response head is not UTF-8"))?;
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| invalid("no status code"))?;
    let mut content_length = None;
    let mut chunked = false;
    for line in head.split("\r\n").skip(1) {
        if let Some((name, value)) = line.split_once(':') {
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                content_length = value.parse::<usize>().ok();
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value.eq_ignore_ascii_case("chunked");
            }
        }
    }
    buffer.drain(..head_end);
    let body = if chunked {
        read_chunked(stream, buffer)?
    } else {
        let length = content_length.unwrap_or(0);
        if length > MAX_BODY_BYTES {
            return Err(invalid("body too large"));
        }
        while buffer.len() < length {
            fill(stream, buffer)?;
        }
        buffer.drain(..length);
        length
    };
    Ok((status, body))
}

/// Reads a chunked body (and its empty trailer section) out of `buffer`/`stream`.
fn read_chunked(stream: &mut impl Read, buffer: &mut Vec<u8>) -> io::Result<usize> {
    let mut total = 0;
    loop {
        let line_end = loop {
            if let Some(end) = find(buffer, b"\r\n") {
                break end;
            }
            fill(stream, buffer)?;
        };
        let size_text = std::str::from_utf8(&buffer[..line_end])
            .map_err(|_| invalid("chunk size is not UTF-8"))?;
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| invalid("bad chunk size"))?;
        buffer.drain(..line_end + 2);
        if size == 0 {
            // Trailer section: lines until an empty one.
            loop {
                let end = loop {
                    if let Some(end) = find(buffer, b"\r\n") {
                        break end;
                    }
                    fill(stream, buffer)?;
                };
                buffer.drain(..end + 2);
                if end == 0 {
                    return Ok(total);
                }
            }
        }
        total += size;
        if total > MAX_BODY_BYTES {
            return Err(invalid("body too large"));
        }
        while buffer.len() < size + 2 {
            fill(stream, buffer)?;
        }
        buffer.drain(..size + 2);
    }
}

/// Appends what the stream has to `buffer`; an error at the end of the stream.
fn fill(stream: &mut impl Read, buffer: &mut Vec<u8>) -> io::Result<()> {
    let mut chunk = [0u8; 16 * 1024];
    let n = stream.read(&mut chunk)?;
    if n == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed before the response ended",
        ));
    }
    buffer.extend_from_slice(&chunk[..n]);
    Ok(())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let l = Latencies::new((1..=1000).rev().collect());
        assert_eq!(l.percentile(50.0), 500);
        assert_eq!(l.percentile(99.0), 990);
        assert_eq!(l.percentile(99.9), 999);
        assert_eq!(l.percentile(100.0), 1000);
        assert_eq!(l.percentile(0.0), 1);
        assert!((l.mean() - 500.5).abs() < 1e-9);
        let json = l.to_json();
        assert_eq!(json["p99_9_us"], 999);
        assert_eq!(json["max_us"], 1000);
        assert_eq!(json["p50_us"], 500);
        assert_eq!(Latencies::new(vec![]).percentile(50.0), 0);
    }

    #[test]
    fn spectrum_stops_where_the_samples_stop_resolving() {
        let l = Latencies::new((1..=1000).collect());
        let points = l.spectrum();
        assert_eq!(points[0], (0.0, 1));
        assert_eq!(points.last().unwrap(), &(100.0, 1000));
        // 1000 samples resolve three nines: 31 points from 0 to 3 nines, plus the max.
        assert_eq!(points.len(), 32, "{points:?}");
        assert!(points.windows(2).all(|w| w[0].1 <= w[1].1));
    }

    #[test]
    fn grpc_frames_carry_the_length() {
        assert_eq!(grpc_frame(b"abc"), vec![0, 0, 0, 0, 3, b'a', b'b', b'c']);
    }

    #[test]
    fn reads_length_framed_and_chunked_responses_back_to_back() {
        let wire = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhelloHTTP/1.1 503 Service Unavailable\r\n\
                     Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=1\r\nde\r\n0\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n";
        let mut stream = &wire[..];
        let mut buffer = Vec::new();
        assert_eq!(read_response(&mut stream, &mut buffer).unwrap(), (200, 5));
        assert_eq!(read_response(&mut stream, &mut buffer).unwrap(), (503, 5));
        assert_eq!(read_response(&mut stream, &mut buffer).unwrap(), (204, 0));
        let error = read_response(&mut stream, &mut buffer).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
    }
}
