//! udp backend (placeholder: filled in by its owner).
