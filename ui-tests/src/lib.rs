//! Compile-fail tests of the covet-txn macros live in `tests/ui`; this crate
//! has no code of its own.
