//! Access logs: file, stdout and stderr sinks, text and JSON formats, filters.
//!
//! An [`AccessLogger`] is built once per configuration from a
//! [`model::http::AccessLog`](crate::model::http::AccessLog): the format is compiled,
//! the file opened (for appending) and a writer thread started. On the request path
//! [`AccessLogger::log`] evaluates the filter, formats the line into one `String` and
//! hands it to the writer over a bounded lock-free channel; it never blocks and never
//! touches the file. The writer batches whatever lines are queued into one `write`
//! (at most every [`FLUSH_INTERVAL`] while busy) and sleeps on the channel when idle.
//! When the writer falls [`QUEUE_CAPACITY`] lines behind, new lines are dropped and
//! counted ([`AccessLogger::dropped`]) rather than stalling requests.
//!
//! Filters follow Envoy's `AccessLogFilter`: `status_code_filter` compares the response
//! code (0 when none was sent), `duration_filter` the stream's duration in milliseconds
//! (the time so far when the stream has not ended), `and_filter` / `or_filter` combine.
//! `not_health_check_filter` rejects requests that Envoy's health-check filter answered;
//! keel has no such filter, so nothing is a health check and it always passes.

use std::io::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::time::Duration;

use crate::model::http::{
    AccessLog, AccessLogFilter, AccessLogFormat, AccessLogSink, Comparison, ComparisonOp,
};

use super::format::{FormatContext, FormatError, Formatter, JsonFormatter};
use super::StreamInfo;

/// Lines queued for the writer before new ones are dropped.
pub const QUEUE_CAPACITY: usize = 16 * 1024;

/// How often a busy writer writes what is queued.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(10);

/// A batch is written as soon as it reaches this size.
const BATCH_BYTES: usize = 64 * 1024;

/// Empty polls after which the writer blocks on the channel instead of polling.
const IDLE_POLLS: u32 = 100;

/// Why an access log cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum AccessLogError {
    /// The format string (or a `json_format` value) does not compile.
    #[error("access log format: {0}")]
    Format(#[from] FormatError),
    /// The log file cannot be opened for appending.
    #[error("access log file {path}: {source} (check that the directory exists and is writable)")]
    Open {
        /// The file.
        path: std::path::PathBuf,
        /// The error from the operating system.
        #[source]
        source: std::io::Error,
    },
    /// The writer thread cannot be started.
    #[error("access log writer thread: {0}")]
    Spawn(#[source] std::io::Error),
}

/// A compiled access log with its sink.
#[derive(Debug)]
pub struct AccessLogger {
    format: LineFormat,
    filter: Option<AccessLogFilter>,
    sender: SyncSender<Message>,
    dropped: Arc<AtomicU64>,
    /// Capacity to give a new line: the longest line so far (capped).
    line_hint: AtomicUsize,
}

#[derive(Debug)]
enum LineFormat {
    Text(Formatter),
    Json(JsonFormatter),
}

enum Message {
    Line(String),
    /// Answered once every line queued before it has been written.
    Flush(mpsc::Sender<()>),
}

impl AccessLogger {
    /// Compiles the format, opens the sink and starts its writer thread.
    pub fn new(config: &AccessLog) -> Result<Self, AccessLogError> {
        let format = match &config.format {
            // As Envoy: a custom format is written as given, without a newline of
            // keel's (Envoy's default format ends with one).
            AccessLogFormat::Text(text) => LineFormat::Text(Formatter::new(text)?),
            AccessLogFormat::Json(fields) => LineFormat::Json(JsonFormatter::new(fields)?),
        };
        let (out, name): (Box<dyn Write + Send>, String) = match &config.sink {
            AccessLogSink::File(path) => {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|source| AccessLogError::Open {
                        path: path.clone(),
                        source,
                    })?;
                (Box::new(file), path.display().to_string())
            }
            AccessLogSink::Stdout => (Box::new(std::io::stdout()), "stdout".into()),
            AccessLogSink::Stderr => (Box::new(std::io::stderr()), "stderr".into()),
        };
        let (sender, receiver) = mpsc::sync_channel(QUEUE_CAPACITY);
        std::thread::Builder::new()
            .name("keel-access-log".into())
            .spawn(move || run_writer(receiver, out, name))
            .map_err(AccessLogError::Spawn)?;
        Ok(AccessLogger {
            format,
            filter: config.filter.clone(),
            sender,
            dropped: Arc::new(AtomicU64::new(0)),
            line_hint: AtomicUsize::new(256),
        })
    }

    /// Logs the stream if the filter lets it through. Never blocks.
    ///
    /// `StreamInfo` carries no request line, so `%REQ(:METHOD)%` and `%REQ(:PATH)%`
    /// render `-` here; use [`log_with`](Self::log_with) with
    /// [`FormatContext::with_request_line`] to supply them.
    pub fn log(&self, info: &StreamInfo) {
        self.log_with(&FormatContext::new(info));
    }

    /// Logs with a full formatter context (request line, scheme, header maps).
    pub fn log_with(&self, ctx: &FormatContext<'_>) {
        if !self.passes(ctx.info) {
            return;
        }
        let hint = self.line_hint.load(Ordering::Relaxed);
        let mut line = String::with_capacity(hint);
        self.format_line(ctx, &mut line);
        if line.len() > hint && hint < 16 * 1024 {
            self.line_hint.store(
                line.len().next_power_of_two().min(16 * 1024),
                Ordering::Relaxed,
            );
        }
        match self.sender.try_send(Message::Line(line)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Whether the filter lets `info` through (true without a filter).
    pub fn passes(&self, info: &StreamInfo) -> bool {
        self.filter.as_ref().is_none_or(|f| filter_passes(f, info))
    }

    /// Appends the line for `ctx` to `out`, unfiltered (a JSON line ends with a
    /// newline; a text line as its format says).
    pub fn format_line(&self, ctx: &FormatContext<'_>, out: &mut String) {
        match &self.format {
            LineFormat::Text(formatter) => formatter.format_with(ctx, out),
            LineFormat::Json(formatter) => formatter.format_with(ctx, out),
        }
    }

    /// Lines dropped because the writer was too far behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Blocks until every line logged before this call has been written and flushed.
    /// For shutdown and tests, not for the request path.
    pub fn flush(&self) {
        let (ack, done) = mpsc::channel();
        if self.sender.send(Message::Flush(ack)).is_ok() {
            let _ = done.recv();
        }
    }
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Message::Line(line) => f.debug_tuple("Line").field(line).finish(),
            Message::Flush(_) => f.write_str("Flush"),
        }
    }
}

/// Envoy's filter evaluation.
pub(crate) fn filter_passes(filter: &AccessLogFilter, info: &StreamInfo) -> bool {
    match filter {
        AccessLogFilter::StatusCode(c) => compare(c, u64::from(info.response_code)),
        AccessLogFilter::Duration(c) => {
            let duration = info.duration.unwrap_or_else(|| info.start.elapsed());
            compare(c, duration.as_millis() as u64)
        }
        AccessLogFilter::NotHealthCheck => true,
        AccessLogFilter::Header(f) => header_matches(&f.0, &info.request_headers),
        AccessLogFilter::And(filters) => filters.iter().all(|f| filter_passes(f, info)),
        AccessLogFilter::Or(filters) => filters.iter().any(|f| filter_passes(f, info)),
    }
}

/// Envoy's `HeaderUtility::matchHeaders` on a header map (several values joined with
/// `,`; the model's regexes are anchored already).
fn header_matches(m: &crate::model::http::HeaderMatcher, headers: &http::HeaderMap) -> bool {
    use crate::model::http::ValueMatch;
    let mut values = headers.get_all(m.name.as_str()).iter();
    let value = match values.next() {
        None => None,
        Some(first) => {
            let mut joined = String::from_utf8_lossy(first.as_bytes()).into_owned();
            for v in values {
                joined.push(',');
                joined.push_str(&String::from_utf8_lossy(v.as_bytes()));
            }
            Some(joined)
        }
    };
    let value = match value {
        Some(v) => v,
        None if m.treat_missing_as_empty => String::new(),
        None => {
            return if m.invert {
                matches!(m.rule, ValueMatch::Present)
            } else {
                matches!(m.rule, ValueMatch::Absent)
            }
        }
    };
    let matched = match &m.rule {
        ValueMatch::Present => true,
        ValueMatch::Absent => false,
        ValueMatch::String(s) => crate::router::string_matches(s, &value),
        ValueMatch::Regex(re) => re.is_match(&value),
        ValueMatch::Range { start, end } => {
            value.parse::<i64>().is_ok_and(|v| v >= *start && v < *end)
        }
    };
    matched != m.invert
}

fn compare(c: &Comparison, value: u64) -> bool {
    match c.op {
        ComparisonOp::Eq => value == c.value,
        ComparisonOp::Ge => value >= c.value,
        ComparisonOp::Le => value <= c.value,
    }
}

/// The writer thread: drains the queue into one buffer, writes it, answers flushes;
/// exits when the logger is dropped and everything queued is written.
fn run_writer(receiver: Receiver<Message>, mut out: Box<dyn Write + Send>, name: String) {
    let mut batch: Vec<u8> = Vec::with_capacity(BATCH_BYTES);
    let mut acks: Vec<mpsc::Sender<()>> = Vec::new();
    let mut failing = false;
    let mut idle_polls = 0u32;
    let mut write = |batch: &mut Vec<u8>, out: &mut Box<dyn Write + Send>| {
        if batch.is_empty() {
            return;
        }
        match out.write_all(batch).and_then(|()| out.flush()) {
            Ok(()) => failing = false,
            Err(error) => {
                if !failing {
                    tracing::warn!(sink = %name, %error, "access log: write failed; lines lost");
                }
                failing = true;
            }
        }
        batch.clear();
    };
    loop {
        let mut disconnected = false;
        let mut received = false;
        loop {
            match receiver.try_recv() {
                Ok(message) => {
                    received = true;
                    handle(message, &mut batch, &mut acks);
                    if batch.len() >= BATCH_BYTES {
                        write(&mut batch, &mut out);
                    }
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    disconnected = true;
                    break;
                }
            }
        }
        write(&mut batch, &mut out);
        for ack in acks.drain(..) {
            let _ = ack.send(());
        }
        if disconnected {
            return;
        }
        if received {
            idle_polls = 0;
        } else {
            idle_polls += 1;
        }
        if idle_polls >= IDLE_POLLS {
            // Idle: sleep on the channel until the next line (or the logger's drop).
            match receiver.recv() {
                Ok(message) => {
                    handle(message, &mut batch, &mut acks);
                    idle_polls = 0;
                }
                Err(_) => return,
            }
        } else {
            std::thread::sleep(FLUSH_INTERVAL);
        }
    }
}

fn handle(message: Message, batch: &mut Vec<u8>, acks: &mut Vec<mpsc::Sender<()>>) {
    match message {
        Message::Line(line) => batch.extend_from_slice(line.as_bytes()),
        Message::Flush(ack) => acks.push(ack),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::http::DEFAULT_ACCESS_LOG_FORMAT;
    use std::time::UNIX_EPOCH;

    fn filled_info() -> StreamInfo {
        let mut info = StreamInfo::new(
            "192.0.2.10:51000".parse().unwrap(),
            "10.0.0.1:10000".parse().unwrap(),
            "HTTP/1.1",
        );
        info.start_time = UNIX_EPOCH + Duration::from_millis(1_717_243_200_123); // 2024-06-01T12:00:00.123Z
        info.response_code = 200;
        info.bytes_received = 5;
        info.bytes_sent = 1234;
        info.duration = Some(Duration::from_millis(42));
        info.upstream_host = Some("10.1.0.7:8080".parse().unwrap());
        info.upstream_cluster = Some("web".into());
        let h = &mut info.request_headers;
        h.insert("host", "shop.example.com".parse().unwrap());
        h.insert("user-agent", "curl/8.5.0".parse().unwrap());
        h.insert("x-forwarded-for", "198.51.100.1".parse().unwrap());
        h.insert(
            "x-request-id",
            "5f1e4c1a-0e3c-4c6e-9f4e-2f6a1b2c3d4e".parse().unwrap(),
        );
        h.insert("x-envoy-original-path", "/shop/cart?id=7".parse().unwrap());
        info.response_headers
            .insert("x-envoy-upstream-service-time", "40".parse().unwrap());
        info
    }

    fn logger(
        sink: AccessLogSink,
        format: AccessLogFormat,
        filter: Option<AccessLogFilter>,
    ) -> AccessLogger {
        AccessLogger::new(&AccessLog {
            sink,
            format,
            filter,
        })
        .unwrap()
    }

    fn line(logger: &AccessLogger, ctx: &FormatContext<'_>) -> String {
        let mut out = String::new();
        logger.format_line(ctx, &mut out);
        out
    }

    #[test]
    fn default_format_line_matches_envoy() {
        let info = filled_info();
        let l = logger(
            AccessLogSink::Stderr,
            AccessLogFormat::Text(DEFAULT_ACCESS_LOG_FORMAT.into()),
            None,
        );
        let method = http::Method::GET;
        let uri: http::Uri = "/cart?id=7".parse().unwrap();
        let ctx = FormatContext::new(&info).with_request_line(&method, &uri);
        assert_eq!(
            line(&l, &ctx),
            "[2024-06-01T12:00:00.123Z] \"GET /shop/cart?id=7 HTTP/1.1\" 200 - 5 1234 42 40 \"198.51.100.1\" \"curl/8.5.0\" \"5f1e4c1a-0e3c-4c6e-9f4e-2f6a1b2c3d4e\" \"shop.example.com\" \"10.1.0.7:8080\"\n"
        );
    }

    #[test]
    fn text_format_is_written_as_given_json_is_one_object_per_line() {
        let info = filled_info();
        let l = logger(
            AccessLogSink::Stderr,
            AccessLogFormat::Text("%RESPONSE_CODE% %UPSTREAM_CLUSTER%".into()),
            None,
        );
        // Envoy 1.40 adds no newline to a custom format (seen: "200 /a200 /b").
        assert_eq!(line(&l, &FormatContext::new(&info)), "200 web");
        let l = logger(
            AccessLogSink::Stderr,
            AccessLogFormat::Json(vec![
                ("status".into(), "%RESPONSE_CODE%".into()),
                ("cluster".into(), "%UPSTREAM_CLUSTER%".into()),
                ("route".into(), "%ROUTE_NAME%".into()),
            ]),
            None,
        );
        assert_eq!(
            line(&l, &FormatContext::new(&info)),
            "{\"status\":200,\"cluster\":\"web\",\"route\":null}\n"
        );
        let bad = AccessLogger::new(&AccessLog {
            sink: AccessLogSink::Stderr,
            format: AccessLogFormat::Text("%WHAT%".into()),
            filter: None,
        });
        assert!(matches!(bad, Err(AccessLogError::Format(_))));
    }

    fn passes(filter: AccessLogFilter, info: &StreamInfo) -> bool {
        logger(
            AccessLogSink::Stderr,
            AccessLogFormat::Text("x".into()),
            Some(filter),
        )
        .passes(info)
    }

    fn cmp(op: ComparisonOp, value: u64) -> Comparison {
        Comparison { op, value }
    }

    #[test]
    fn filters() {
        let mut info = filled_info();
        use AccessLogFilter::*;
        use ComparisonOp::*;
        assert!(passes(StatusCode(cmp(Eq, 200)), &info));
        assert!(!passes(StatusCode(cmp(Ge, 400)), &info));
        assert!(passes(StatusCode(cmp(Le, 299)), &info));
        assert!(passes(Duration(cmp(Ge, 42)), &info));
        assert!(!passes(Duration(cmp(Ge, 43)), &info));
        assert!(passes(Duration(cmp(Le, 42)), &info));
        assert!(passes(NotHealthCheck, &info));
        assert!(!passes(
            And(vec![StatusCode(cmp(Eq, 200)), Duration(cmp(Ge, 100))]),
            &info
        ));
        assert!(passes(
            Or(vec![StatusCode(cmp(Ge, 500)), Duration(cmp(Le, 100))]),
            &info
        ));
        assert!(!passes(
            Or(vec![StatusCode(cmp(Ge, 500)), Duration(cmp(Ge, 100))]),
            &info
        ));
        assert!(passes(
            And(vec![NotHealthCheck, Or(vec![StatusCode(cmp(Eq, 200))])]),
            &info
        ));
        // No response sent: the code is 0.
        info.response_code = 0;
        assert!(passes(StatusCode(cmp(Eq, 0)), &info));
        // A stream still running is measured up to now.
        info.duration = None;
        assert!(passes(Duration(cmp(Le, 60_000)), &info));
    }

    #[test]
    fn file_sink_receives_lines() {
        let dir = std::env::temp_dir().join(format!(
            "keel-access-log-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("access.log");
        std::fs::write(&path, "existing\n").unwrap();
        let l = logger(
            AccessLogSink::File(path.clone()),
            AccessLogFormat::Text("%RESPONSE_CODE% %BYTES_SENT%\n".into()),
            Some(AccessLogFilter::StatusCode(cmp(ComparisonOp::Ge, 200))),
        );
        let mut info = filled_info();
        l.log(&info);
        info.response_code = 100; // filtered out
        l.log(&info);
        info.response_code = 503;
        info.bytes_sent = 0;
        l.log(&info);
        l.flush();
        let written = std::fs::read_to_string(&path).unwrap();
        assert_eq!(written, "existing\n200 1234\n503 0\n");
        assert_eq!(l.dropped(), 0);

        // Many lines from several threads all arrive, whole.
        let l = Arc::new(l);
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let l = Arc::clone(&l);
                let mut info = filled_info();
                std::thread::spawn(move || {
                    for i in 0..500 {
                        info.bytes_sent = t * 1000 + i;
                        l.log(&info);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        l.flush();
        let written = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = written.lines().skip(3).collect();
        assert_eq!(lines.len() as u64 + l.dropped(), 2000);
        assert!(
            lines.iter().all(|line| line.starts_with("200 ")),
            "torn line in {written}"
        );
        drop(l);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unopenable_file_is_an_error_naming_it() {
        let err = AccessLogger::new(&AccessLog {
            sink: AccessLogSink::File("/nonexistent-dir/keel/access.log".into()),
            format: AccessLogFormat::Text("x".into()),
            filter: None,
        })
        .unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent-dir/keel/access.log"),
            "{err}"
        );
    }

    #[test]
    fn header_filter_matches_request_headers() {
        use crate::model::http::{
            HeaderFilter, HeaderMatcher, StringMatchKind, StringMatcher, ValueMatch,
        };
        let mut info = filled_info();
        info.request_headers = http::HeaderMap::new();
        info.request_headers
            .append("x-a", http::HeaderValue::from_static("1"));
        info.request_headers
            .append("x-a", http::HeaderValue::from_static("2"));
        let filter = |name: &str, rule: ValueMatch, invert: bool| {
            AccessLogFilter::Header(HeaderFilter(HeaderMatcher {
                name: name.into(),
                rule,
                invert,
                treat_missing_as_empty: false,
            }))
        };
        let exact = |v: &str| {
            ValueMatch::String(StringMatcher {
                kind: StringMatchKind::Exact,
                value: v.into(),
                ignore_case: false,
            })
        };
        assert!(
            filter_passes(&filter("x-a", exact("1,2"), false), &info),
            "values joined"
        );
        assert!(!filter_passes(&filter("x-a", exact("1"), false), &info));
        assert!(
            filter_passes(&filter("x-a", exact("1"), true), &info),
            "inverted"
        );
        assert!(filter_passes(
            &filter("x-b", ValueMatch::Absent, false),
            &info
        ));
        assert!(!filter_passes(
            &filter("x-b", ValueMatch::Present, false),
            &info
        ));
        let re = regex::Regex::new("^(?:[0-9],[0-9])$").unwrap();
        assert!(filter_passes(
            &filter("x-a", ValueMatch::Regex(re), false),
            &info
        ));
    }
}
