//! A cluster's circuit breakers (`circuit_breakers`): the limits that keep one busy
//! or failing upstream from taking the whole proxy down with it.

/// `circuit_breakers` of a cluster: thresholds per routing priority.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CircuitBreakers {}
