//! Maglev consistent hashing (Eisenbud et al., NSDI 2016), with weights.
//!
//! Each backend walks the table in its own permutation (an offset and a skip derived
//! from two hashes of its identity) and claims the first free entry on each of its
//! turns. A backend takes turns in proportion to its weight. Because permutations
//! depend on identities, not on slot numbers, removing one of N backends moves about
//! 1/N of the entries.

/// 64-bit FNV-1a of `bytes` with a seed; good enough to derive permutations.
fn hash64(seed: u64, bytes: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // Final mix (splitmix64) so that similar identities spread apart.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// Whether `n` is prime (table sizes must be).
pub fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2u32;
    while (d as u64) * (d as u64) <= n as u64 {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}

/// Builds a Maglev table of `size` entries (a prime, larger than the number of
/// backends). `backends` are (identity, weight); the result maps each entry to a slot
/// index into `backends`. Returns an empty table when there are no backends.
pub fn table(backends: &[(Vec<u8>, u32)], size: u32) -> Vec<u32> {
    const FREE: u32 = u32::MAX;
    let m = size as u64;
    if backends.is_empty() || m == 0 {
        return Vec::new();
    }
    let permutations: Vec<(u64, u64)> = backends
        .iter()
        .map(|(id, _)| {
            let offset = hash64(0x6b65_656c, id) % m;
            let skip = hash64(0x6d61_676c, id) % (m - 1) + 1;
            (offset, skip)
        })
        .collect();
    let max_weight = backends.iter().map(|(_, w)| *w).max().unwrap_or(1).max(1) as u64;
    let mut next = vec![0u64; backends.len()];
    let mut credit = vec![0u64; backends.len()];
    let mut entries = vec![FREE; size as usize];
    let mut filled = 0u64;
    'fill: loop {
        for (i, &(offset, skip)) in permutations.iter().enumerate() {
            // Weighted turns: a backend of weight w takes w/max_weight of the turns.
            credit[i] += backends[i].1.max(1) as u64;
            if credit[i] < max_weight {
                continue;
            }
            credit[i] -= max_weight;
            let mut candidate = (offset + next[i] * skip) % m;
            while entries[candidate as usize] != FREE {
                next[i] += 1;
                candidate = (offset + next[i] * skip) % m;
            }
            entries[candidate as usize] = i as u32;
            next[i] += 1;
            filled += 1;
            if filled == m {
                break 'fill;
            }
        }
    }
    entries
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<(Vec<u8>, u32)> {
        (0..n)
            .map(|i| (format!("10.0.0.{i}:80").into_bytes(), 1))
            .collect()
    }

    #[test]
    fn primes() {
        assert!(is_prime(16381));
        assert!(is_prime(65537));
        assert!(!is_prime(65536));
        assert!(!is_prime(1));
    }

    #[test]
    fn equal_weights_share_the_table_evenly() {
        let t = table(&ids(5), 16381);
        let mut counts = [0u32; 5];
        for &s in &t {
            counts[s as usize] += 1;
        }
        for c in counts {
            assert!((3100..=3450).contains(&c), "uneven: {counts:?}");
        }
    }

    #[test]
    fn weights_are_respected() {
        let mut backends = ids(2);
        backends[1].1 = 3;
        let t = table(&backends, 16381);
        let heavy = t.iter().filter(|&&s| s == 1).count() as f64;
        let share = heavy / t.len() as f64;
        assert!((share - 0.75).abs() < 0.02, "share {share}");
    }

    #[test]
    fn removing_one_of_n_moves_about_one_nth() {
        let n = 10;
        let before = table(&ids(n), 16381);
        // Remove backend 3: the remaining keep their identities; slots above 3 shift down.
        let mut remaining = ids(n);
        remaining.remove(3);
        let after = table(&remaining, 16381);
        let identity = |slot: u32, removed: bool| -> u32 {
            if removed && slot >= 3 {
                slot + 1
            } else {
                slot
            }
        };
        let moved = before
            .iter()
            .zip(&after)
            .filter(|(&b, &a)| b != 3 && identity(a, true) != b)
            .count();
        let disrupted = moved as f64 / before.len() as f64;
        // Entries of the removed backend must move; of the rest, only a few percent.
        assert!(
            disrupted < 0.03,
            "{:.3} of the other entries moved",
            disrupted
        );
    }
}
