//! The stats store: counters, gauges and histograms under Envoy's stat names.
