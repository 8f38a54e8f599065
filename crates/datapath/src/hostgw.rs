//! host-gw backend (placeholder: filled in by its owner).
