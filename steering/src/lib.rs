//! rudder-steering: filled by a later issue (see ARCHITECTURE.md); nothing here yet.
