//! rudder-sim: filled by a later issue (see ARCHITECTURE.md); nothing here yet.
