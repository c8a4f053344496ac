//! Envoy's substitution formatter: `%COMMAND%` operators in access-log formats and in
//! header values, compiled once per configuration into segments.

use super::StreamInfo;

/// Why a format string is invalid.
#[derive(Debug, thiserror::Error)]
#[error("invalid format string: {0}")]
pub struct FormatError(pub String);

/// A compiled format string.
#[derive(Debug, Clone)]
pub struct Formatter {
    _segments: Vec<String>,
}

impl Formatter {
    /// Compiles `format`; unknown operators are an error naming them.
    pub fn new(format: &str) -> Result<Formatter, FormatError> {
        let _ = format;
        unimplemented!("observe::format is being written")
    }

    /// Renders for `info`, appending to `out`.
    pub fn format_into(&self, info: &StreamInfo, out: &mut String) {
        let _ = (info, out);
        unimplemented!("observe::format is being written")
    }
}
