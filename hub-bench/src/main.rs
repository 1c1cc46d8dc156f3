//! Benchmark tool (under construction).
fn main() {}
