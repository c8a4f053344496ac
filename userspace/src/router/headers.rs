//! Header mutations (`request_headers_to_add` / `_remove` and the response
//! counterparts), compiled once per configuration and applied the way Envoy's
//! `HeaderParser::evaluateHeaders` does:
//!
//! 1. the `*_to_remove` names are removed;
//! 2. every value is formatted and every `append_action` condition is decided against
//!    the headers as they are now (so two entries of one level do not see each other);
//! 3. overwrites are applied, then appends.
//!
//! Values without `%` are kept as ready `HeaderValue`s (cloning one is a reference-count
//! increment); only values with `%VARIABLE%` go through [`Formatter`].

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::model::http::{AppendAction, HeaderMutations, HeaderValueOption};
use crate::observe::format::{FormatContext, Formatter};

/// Why a header mutation could not be compiled.
#[derive(Debug, thiserror::Error)]
pub enum HeaderMutationError {
    /// The header name is not a valid HTTP header name (pseudo-headers cannot be set).
    #[error("header {name:?}: invalid header name")]
    InvalidName {
        /// The name as configured.
        name: String,
    },
    /// The value is not a valid header value.
    #[error("header {name:?}: invalid header value {value:?}")]
    InvalidValue {
        /// The header name.
        name: String,
        /// The value as configured.
        value: String,
    },
    /// The value's `%VARIABLE%` substitutions do not parse.
    #[error("header {name:?}: {source}")]
    Format {
        /// The header name.
        name: String,
        /// What the formatter said.
        #[source]
        source: crate::observe::format::FormatError,
    },
}

/// One level's compiled request and response mutations.
#[derive(Debug, Clone, Default)]
pub(crate) struct CompiledMutations {
    pub request: HeaderOps,
    pub response: HeaderOps,
}

impl CompiledMutations {
    /// Compiles `m`; entries that do not compile are reported in `errors` and left out.
    pub fn new(m: &HeaderMutations, errors: &mut Vec<HeaderMutationError>) -> CompiledMutations {
        CompiledMutations {
            request: HeaderOps::new(&m.request_add, &m.request_remove, errors),
            response: HeaderOps::new(&m.response_add, &m.response_remove, errors),
        }
    }
}

/// Compiled `*_headers_to_add` and `*_headers_to_remove` of one level.
#[derive(Debug, Clone, Default)]
pub(crate) struct HeaderOps {
    remove: Vec<HeaderName>,
    add: Vec<AddOp>,
    dynamic: usize,
}

#[derive(Debug, Clone)]
struct AddOp {
    name: HeaderName,
    value: OpValue,
    action: AppendAction,
    keep_empty_value: bool,
}

#[derive(Debug, Clone)]
enum OpValue {
    Static(HeaderValue),
    Dynamic(Formatter),
}

/// Which header map of the exchange is being mutated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Target {
    /// Request headers (formatters' `%REQ(..)%` read them).
    Request,
    /// Response headers (formatters' `%RESP(..)%` read them).
    Response,
}

/// What pass 2 decided for one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plan {
    Skip,
    Overwrite,
    Append,
}

impl HeaderOps {
    fn new(
        add: &[HeaderValueOption],
        remove: &[String],
        errors: &mut Vec<HeaderMutationError>,
    ) -> HeaderOps {
        let mut ops = HeaderOps::default();
        for name in remove {
            match HeaderName::from_bytes(name.as_bytes()) {
                Ok(n) => ops.remove.push(n),
                Err(_) => errors.push(HeaderMutationError::InvalidName { name: name.clone() }),
            }
        }
        for option in add {
            match compile_add(option) {
                Ok(op) => {
                    if matches!(op.value, OpValue::Dynamic(_)) {
                        ops.dynamic += 1;
                    }
                    ops.add.push(op);
                }
                Err(e) => errors.push(e),
            }
        }
        ops
    }

    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.add.is_empty()
    }

    /// Applies these mutations to `headers`, which are the request headers or the
    /// response headers as `target` says: formatters read the map being mutated in
    /// that role and everything else from `base`.
    pub fn apply(&self, headers: &mut HeaderMap, base: &FormatContext<'_>, target: Target) {
        if self.is_empty() {
            return;
        }
        for name in &self.remove {
            headers.remove(name);
        }
        if self.add.is_empty() {
            return;
        }

        // Pass 2: decide and format against the headers as they are now. Decisions
        // and formatted values live on the stack for the usual few entries.
        const INLINE: usize = 8;
        let n = self.add.len();
        let mut inline: [(Plan, Option<HeaderValue>); INLINE] =
            std::array::from_fn(|_| (Plan::Skip, None));
        let mut heap = Vec::new();
        let slots: &mut [(Plan, Option<HeaderValue>)] = if n <= INLINE {
            &mut inline[..n]
        } else {
            heap.resize_with(n, || (Plan::Skip, None));
            &mut heap
        };
        {
            let shared: &HeaderMap = headers;
            let ctx = (self.dynamic > 0).then(|| {
                let mut ctx = *base;
                match target {
                    Target::Request => ctx.request_headers = shared,
                    Target::Response => ctx.response_headers = shared,
                }
                ctx
            });
            for (op, slot) in self.add.iter().zip(slots.iter_mut()) {
                let has_value = match &op.value {
                    OpValue::Static(v) => !v.is_empty() || op.keep_empty_value,
                    OpValue::Dynamic(f) => {
                        let mut text = String::new();
                        if let Some(ctx) = &ctx {
                            f.format_with(ctx, &mut text);
                        }
                        if text.is_empty() && !op.keep_empty_value {
                            false
                        } else {
                            slot.1 = HeaderValue::from_maybe_shared(bytes::Bytes::from(text)).ok();
                            slot.1.is_some()
                        }
                    }
                };
                if !has_value {
                    continue;
                }
                slot.0 = match op.action {
                    AppendAction::AppendIfExistsOrAdd => Plan::Append,
                    AppendAction::AddIfAbsent if shared.contains_key(&op.name) => Plan::Skip,
                    AppendAction::AddIfAbsent => Plan::Append,
                    AppendAction::OverwriteIfExistsOrAdd => Plan::Overwrite,
                    AppendAction::OverwriteIfExists if shared.contains_key(&op.name) => {
                        Plan::Overwrite
                    }
                    AppendAction::OverwriteIfExists => Plan::Skip,
                };
            }
        }

        // Pass 3: overwrites, then appends.
        for wanted in [Plan::Overwrite, Plan::Append] {
            for (op, slot) in self.add.iter().zip(slots.iter_mut()) {
                if slot.0 != wanted {
                    continue;
                }
                let value = match &op.value {
                    OpValue::Static(v) => v.clone(),
                    OpValue::Dynamic(_) => match slot.1.take() {
                        Some(v) => v,
                        None => continue,
                    },
                };
                if wanted == Plan::Overwrite {
                    headers.insert(op.name.clone(), value);
                } else {
                    headers.append(op.name.clone(), value);
                }
            }
        }
    }
}

fn compile_add(option: &HeaderValueOption) -> Result<AddOp, HeaderMutationError> {
    let name = HeaderName::from_bytes(option.name.as_bytes()).map_err(|_| {
        HeaderMutationError::InvalidName {
            name: option.name.clone(),
        }
    })?;
    let value = if option.value.contains('%') {
        let formatter = Formatter::new_header_value(&option.value).map_err(|source| {
            HeaderMutationError::Format {
                name: option.name.clone(),
                source,
            }
        })?;
        match formatter.literal() {
            Some(text) => OpValue::Static(static_value(option, text)?),
            None => OpValue::Dynamic(formatter),
        }
    } else {
        OpValue::Static(static_value(option, &option.value)?)
    };
    Ok(AddOp {
        name,
        value,
        action: option.action,
        keep_empty_value: option.keep_empty_value,
    })
}

fn static_value(
    option: &HeaderValueOption,
    text: &str,
) -> Result<HeaderValue, HeaderMutationError> {
    HeaderValue::from_maybe_shared(bytes::Bytes::copy_from_slice(text.as_bytes())).map_err(|_| {
        HeaderMutationError::InvalidValue {
            name: option.name.clone(),
            value: option.value.clone(),
        }
    })
}
