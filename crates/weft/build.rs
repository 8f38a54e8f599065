//! The same build script as weftd's: the git revision for `weft --version`.
include!("../weftd/build.rs");
