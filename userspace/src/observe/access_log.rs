//! Access logs: file, stdout and stderr sinks, text and JSON formats, filters.
