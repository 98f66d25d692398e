//! The driving side of the embodiment interface: what a planner sees and what it returns.
