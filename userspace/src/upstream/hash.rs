//! The request hash of a route's `hash_policy`, which RING_HASH and MAGLEV clusters
//! pick by: the same key goes to the same host while the hosts stay the same.

use std::net::IpAddr;

use http::{HeaderMap, HeaderValue};

use crate::model::http::HashPolicy;

/// A request's hash, and the cookie to set on the response when a cookie policy
/// generated the key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestHash {
    /// The hash; `None` when no policy applied.
    pub value: Option<u64>,
    /// A `set-cookie` value for the response (a generated cookie).
    pub set_cookie: Option<HeaderValue>,
}

/// Walks `policies` in order over a request's headers and its downstream source.
pub fn request_hash(
    policies: &[HashPolicy],
    _headers: &HeaderMap,
    _source: Option<IpAddr>,
) -> RequestHash {
    if policies.is_empty() {
        return RequestHash::default();
    }
    // The walk itself comes with the hashing load balancers.
    RequestHash::default()
}
