//! Compile passes: each a small graph → graph transformation in its own file,
//! testable alone. The executor runs them in order when it specialises a graph
//! for concrete input shapes:
//! [`specialize`] (concrete shapes) → [`decompose`] (composites the backend
//! lacks) → [`prune`] (what the outputs and side effects need).

pub mod decompose;
pub mod prune;
pub mod specialize;
