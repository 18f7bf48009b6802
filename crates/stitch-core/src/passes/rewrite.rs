//! Pattern rewrites (placeholder; being written).
