//! A cluster's circuit breakers (`circuit_breakers`): the limits that keep one busy
//! or failing upstream from taking the whole proxy down with it.
//!
//! Envoy keeps one set of thresholds per routing priority (`DEFAULT`, `HIGH`); the
//! route's `priority` picks the set a request counts against. A threshold left out
//! takes Envoy's default: 1024 connections, 1024 pending requests, 1024 requests and
//! 3 retries.

/// Envoy's default `max_connections`, `max_pending_requests` and `max_requests`.
pub const DEFAULT_MAX: u32 = 1024;
/// Envoy's default `max_retries`.
pub const DEFAULT_MAX_RETRIES: u32 = 3;

/// `circuit_breakers` of a cluster: thresholds per routing priority.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CircuitBreakers {
    /// The thresholds with `priority: DEFAULT` (or no priority).
    pub default: Thresholds,
    /// The thresholds with `priority: HIGH`.
    pub high: Thresholds,
}

impl CircuitBreakers {
    /// The thresholds for `priority`.
    pub fn at(&self, priority: RoutingPriority) -> &Thresholds {
        match priority {
            RoutingPriority::Default => &self.default,
            RoutingPriority::High => &self.high,
        }
    }
}

/// A route's `priority` (`envoy.config.core.v3.RoutingPriority`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum RoutingPriority {
    /// `DEFAULT`.
    #[default]
    Default,
    /// `HIGH`.
    High,
}

impl RoutingPriority {
    /// The name in stats (`circuit_breakers.<name>.rq_open`).
    pub fn stat_name(self) -> &'static str {
        match self {
            RoutingPriority::Default => "default",
            RoutingPriority::High => "high",
        }
    }
}

/// `circuit_breakers.thresholds[*]` for one priority.
#[derive(Debug, Clone, PartialEq)]
pub struct Thresholds {
    /// `max_connections`: open connections to the cluster's hosts.
    pub max_connections: u32,
    /// `max_pending_requests`: requests waiting for a connection.
    pub max_pending_requests: u32,
    /// `max_requests`: requests in flight to the cluster.
    pub max_requests: u32,
    /// `max_retries`: retries in flight (ignored when `retry_budget` is set).
    pub max_retries: u32,
    /// `retry_budget`: retries allowed as a share of the requests in flight.
    pub retry_budget: Option<RetryBudget>,
    /// `track_remaining`: publish `remaining_*` gauges.
    pub track_remaining: bool,
}

impl Default for Thresholds {
    fn default() -> Thresholds {
        Thresholds {
            max_connections: DEFAULT_MAX,
            max_pending_requests: DEFAULT_MAX,
            max_requests: DEFAULT_MAX,
            max_retries: DEFAULT_MAX_RETRIES,
            retry_budget: None,
            track_remaining: false,
        }
    }
}

/// `retry_budget`: at most `budget_percent` of the active and pending requests may be
/// retries, and never fewer than `min_retry_concurrency`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryBudget {
    /// `budget_percent` (default 20.0).
    pub budget_percent: f64,
    /// `min_retry_concurrency` (default 3).
    pub min_retry_concurrency: u32,
}

impl Default for RetryBudget {
    fn default() -> RetryBudget {
        RetryBudget {
            budget_percent: 20.0,
            min_retry_concurrency: 3,
        }
    }
}
