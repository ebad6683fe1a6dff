//! The planner's costs inside a write transaction. Its statements look up
//! the few hundred ids of one batch, in tables of any size, and the pages
//! they touch were mostly written moments ago: index probes are right. With
//! the default `random_page_cost` (4, a spinning disk's) the planner reads a
//! merge-state table whole by a sequential scan until it holds some tens of
//! thousands of rows: the trace read of a 162-trace batch against 18,000
//! stored traces took 5-7 ms that way and 1.3-2 ms by index probes
//! (docs/benchmarks.md). `SET LOCAL` ends with the transaction, so no other
//! session and no pooled connection sees it.

/// Random reads cost about what sequential ones do: cached or on SSD.
pub const INDEX_PROBES: &str = "SET LOCAL random_page_cost = 1.1";
