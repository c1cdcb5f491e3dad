//! Seeds for repeatable fault schedules.

/// The seeded generator of fault schedules ([`colony::seeded::SplitMix64`]).
pub use colony::seeded::SplitMix64 as Seeded;

/// A seed from the environment variable `COLONY_FAULT_SEED`, or from the clock: a failing run
/// prints its seed, and setting the variable repeats it.
pub fn seed_from_env() -> u64 {
    std::env::var("COLONY_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_schedules_repeat() {
        let a: Vec<u64> = (0..4)
            .map({
                let mut s = Seeded::new(7);
                move |_| s.range(10, 20)
            })
            .collect();
        let b: Vec<u64> = (0..4)
            .map({
                let mut s = Seeded::new(7);
                move |_| s.range(10, 20)
            })
            .collect();
        assert_eq!(a, b);
        assert!(a.iter().all(|v| (10..20).contains(v)));
    }
}
