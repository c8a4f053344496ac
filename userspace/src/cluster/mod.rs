//! Load-balancing tables shared by the kernel data path and userspace.
//!
//! A backend set is balanced through a lookup table of backend slots: Maglev fills it
//! by consistent hashing, round robin by a smooth weighted sequence, random by each
//! slot repeated in proportion to its weight. The kernel indexes the same tables
//! ([`keel_common::map_names::LB_TABLES`]); userspace (the tcp_proxy path) uses them too,
//! so both sides balance alike.

pub mod maglev;

use crate::model::Endpoint;

/// Longest round-robin or random table built for a backend set (weights are scaled
/// down to fit).
pub const MAX_TABLE_LEN: u32 = 65_536;

/// The Maglev table of `endpoints`, keyed by each endpoint's address: the kernel and the
/// userspace proxies build it the same way, so they agree on where a flow goes.
pub fn maglev_table(endpoints: &[Endpoint], table_size: u32) -> Vec<u32> {
    let ids: Vec<(Vec<u8>, u32)> = endpoints
        .iter()
        .map(|e| (e.address.to_string().into_bytes(), e.weight.max(1)))
        .collect();
    maglev::table(&ids, table_size)
}

/// Greatest common divisor.
fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Weights divided by their common divisor and, if their sum is above `max_len`,
/// scaled down so that it fits (each weight stays ≥ 1).
fn reduce_weights(weights: &[u32], max_len: u32) -> Vec<u32> {
    let divisor = weights.iter().copied().fold(0, gcd).max(1);
    let mut reduced: Vec<u32> = weights.iter().map(|w| (w / divisor).max(1)).collect();
    let sum: u64 = reduced.iter().map(|&w| w as u64).sum();
    if sum > max_len as u64 {
        let budget = max_len as u64 - reduced.len() as u64;
        reduced = reduced
            .iter()
            .map(|&w| 1 + ((w as u64 - 1) * budget / sum) as u32)
            .collect();
    }
    reduced
}

/// Smooth weighted round robin (as in nginx): each slot appears in proportion to its
/// weight, and the heavy slots are spread through the sequence rather than bunched.
/// Length: the sum of the reduced weights, at most `max_len`.
pub fn round_robin_table(weights: &[u32], max_len: u32) -> Vec<u32> {
    let weights = reduce_weights(weights, max_len);
    let total: i64 = weights.iter().map(|&w| w as i64).sum();
    let mut current = vec![0i64; weights.len()];
    let mut table = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for (i, &w) in weights.iter().enumerate() {
            current[i] += w as i64;
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        table.push(best as u32);
    }
    table
}

/// Each slot repeated in proportion to its weight: a uniform random index into it is a
/// weighted random pick.
pub fn random_table(weights: &[u32], max_len: u32) -> Vec<u32> {
    reduce_weights(weights, max_len)
        .iter()
        .enumerate()
        .flat_map(|(slot, &w)| std::iter::repeat_n(slot as u32, w as usize))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn histogram(table: &[u32], slots: usize) -> Vec<usize> {
        let mut h = vec![0; slots];
        for &s in table {
            h[s as usize] += 1;
        }
        h
    }

    #[test]
    fn round_robin_follows_weights_and_interleaves() {
        let table = round_robin_table(&[5, 1, 1], 1024);
        assert_eq!(histogram(&table, 3), vec![5, 1, 1]);
        // Smooth: the heavy slot never runs more than 3 times in a row here.
        assert_eq!(table, vec![0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn equal_weights_reduce_to_one_each() {
        let table = round_robin_table(&[100, 100, 100], 1024);
        assert_eq!(table, vec![0, 1, 2]);
    }

    #[test]
    fn large_weights_are_scaled_into_the_limit() {
        let table = round_robin_table(&[1_000_000, 1, 3_000_000], 1000);
        assert!(table.len() <= 1000, "len {}", table.len());
        let h = histogram(&table, 3);
        assert!(h[1] >= 1, "every slot keeps a place: {h:?}");
        let ratio = h[2] as f64 / h[0] as f64;
        assert!((ratio - 3.0).abs() < 0.05, "ratio {ratio}");
    }

    #[test]
    fn random_table_repeats_by_weight() {
        let table = random_table(&[2, 4, 6], 1024);
        assert_eq!(histogram(&table, 3), vec![1, 2, 3]);
    }
}
