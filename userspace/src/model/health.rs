//! How a cluster learns that a host is unhealthy: active health checks
//! (`health_checks`) and passive outlier detection (`outlier_detection`).

/// One entry of a cluster's `health_checks`.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthCheck {}

/// A cluster's `outlier_detection`.
#[derive(Debug, Clone, PartialEq)]
pub struct OutlierDetection {}
