//! Driving simulator with nuPlan metrics. See sim/README.md.
