//! rudder-policy: filled by a later issue (see ARCHITECTURE.md); nothing here yet.
