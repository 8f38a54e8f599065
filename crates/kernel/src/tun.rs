//! TUN devices (placeholder: filled in by its owner).
