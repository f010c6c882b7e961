//! The benchmark lives in `benches/compare.rs`: `cargo bench -p covet-txn-bench`.
