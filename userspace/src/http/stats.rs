//! `http.<stat_prefix>.*` stats of a connection manager, resolved once.

use crate::observe::stats::{self, Counter, Gauge};

/// The connection manager's counters and gauges (Envoy's names).
#[derive(Debug)]
pub(crate) struct HcmStats {
    pub downstream_cx_total: Counter,
    pub downstream_cx_active: Gauge,
    pub downstream_cx_http1_total: Counter,
    pub downstream_cx_http2_total: Counter,
    pub downstream_cx_idle_timeout: Counter,
    pub downstream_cx_max_duration_reached: Counter,
    pub downstream_rq_total: Counter,
    pub downstream_rq_active: Gauge,
    pub downstream_rq_http1_total: Counter,
    pub downstream_rq_http2_total: Counter,
    pub downstream_rq_timeout: Counter,
    pub downstream_rq_idle_timeout: Counter,
    pub downstream_rq_max_duration_reached: Counter,
    pub downstream_cx_upgrades_total: Counter,
    pub requests_rejected_with_underscores_in_headers: Counter,
    pub dropped_headers_with_underscores: Counter,
    /// `downstream_rq_1xx` .. `downstream_rq_5xx`.
    pub downstream_rq_class: [Counter; 5],
    /// Router stats under the same prefix.
    pub no_route: Counter,
    pub no_cluster: Counter,
    pub rq_redirect: Counter,
    pub rq_direct_response: Counter,
    pub rq_total: Counter,
    pub downstream_rq_failed_path_normalization: Counter,
    pub downstream_rq_redirected_with_normalized_path: Counter,
}

impl HcmStats {
    pub(crate) fn new(stat_prefix: &str) -> HcmStats {
        let store = stats::global();
        let counter = |name: &str| store.counter(&format!("http.{stat_prefix}.{name}"));
        let gauge = |name: &str| store.gauge(&format!("http.{stat_prefix}.{name}"));
        HcmStats {
            downstream_cx_total: counter("downstream_cx_total"),
            downstream_cx_active: gauge("downstream_cx_active"),
            downstream_cx_http1_total: counter("downstream_cx_http1_total"),
            downstream_cx_http2_total: counter("downstream_cx_http2_total"),
            downstream_cx_idle_timeout: counter("downstream_cx_idle_timeout"),
            downstream_cx_max_duration_reached: counter("downstream_cx_max_duration_reached"),
            downstream_rq_total: counter("downstream_rq_total"),
            downstream_rq_active: gauge("downstream_rq_active"),
            downstream_rq_http1_total: counter("downstream_rq_http1_total"),
            downstream_rq_http2_total: counter("downstream_rq_http2_total"),
            downstream_rq_timeout: counter("downstream_rq_timeout"),
            downstream_rq_idle_timeout: counter("downstream_rq_idle_timeout"),
            downstream_rq_max_duration_reached: counter("downstream_rq_max_duration_reached"),
            downstream_cx_upgrades_total: counter("downstream_cx_upgrades_total"),
            requests_rejected_with_underscores_in_headers: counter(
                "requests_rejected_with_underscores_in_headers",
            ),
            dropped_headers_with_underscores: counter("dropped_headers_with_underscores"),
            downstream_rq_class: [1, 2, 3, 4, 5].map(|c| counter(&format!("downstream_rq_{c}xx"))),
            no_route: counter("no_route"),
            no_cluster: counter("no_cluster"),
            rq_redirect: counter("rq_redirect"),
            rq_direct_response: counter("rq_direct_response"),
            rq_total: counter("rq_total"),
            downstream_rq_failed_path_normalization: counter(
                "downstream_rq_failed_path_normalization",
            ),
            downstream_rq_redirected_with_normalized_path: counter(
                "downstream_rq_redirected_with_normalized_path",
            ),
        }
    }

    /// Counts a response status sent downstream.
    #[inline]
    pub(crate) fn record_status(&self, code: u16) {
        if (100..600).contains(&code) {
            self.downstream_rq_class[(code / 100 - 1) as usize].inc();
        }
    }
}

/// Stats of one virtual cluster (`vhost.<vhost>.vcluster.<name>.*`), as Envoy's router
/// charges them for a forwarded request: `upstream_rq_total` when it is forwarded,
/// `upstream_rq_completed`, `upstream_rq_<class>xx` and `upstream_rq_<code>` for its
/// response.
#[derive(Debug)]
pub(crate) struct VirtualClusterStats {
    prefix: String,
    pub upstream_rq_total: Counter,
    upstream_rq_completed: Counter,
    class: [Counter; 5],
    /// `upstream_rq_<code>` for 100..=599, made on first use.
    codes: Box<[std::sync::OnceLock<Counter>]>,
}

impl VirtualClusterStats {
    pub(crate) fn new(virtual_host: &str, name: &str) -> VirtualClusterStats {
        let store = stats::global();
        let prefix = format!("vhost.{virtual_host}.vcluster.{name}.");
        let counter = |stat: &str| store.counter(&format!("{prefix}{stat}"));
        VirtualClusterStats {
            upstream_rq_total: counter("upstream_rq_total"),
            upstream_rq_completed: counter("upstream_rq_completed"),
            class: [1, 2, 3, 4, 5].map(|c| counter(&format!("upstream_rq_{c}xx"))),
            codes: (100..600).map(|_| std::sync::OnceLock::new()).collect(),
            prefix,
        }
    }

    /// Counts a response.
    pub(crate) fn record(&self, code: u16) {
        if !(100..600).contains(&code) {
            return;
        }
        self.upstream_rq_completed.inc();
        self.class[(code / 100 - 1) as usize].inc();
        self.codes[(code - 100) as usize]
            .get_or_init(|| stats::global().counter(&format!("{}upstream_rq_{code}", self.prefix)))
            .inc();
    }
}
