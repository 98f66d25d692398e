//! Tabletop manipulation simulator (LIBERO-style). See sim/README.md.
