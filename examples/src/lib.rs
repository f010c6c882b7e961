//! Runnable covet-txn programs live in `examples/`: `cargo run --example
//! quickstart` is the place to start.
