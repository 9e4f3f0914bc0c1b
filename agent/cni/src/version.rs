//! The CNI spec versions this plugin speaks: read by the configuration parser, announced by the
//! VERSION result. It depends on nothing else in the crate.

/// Spec versions this plugin speaks; both have the same result shape.
pub const SUPPORTED_VERSIONS: [&str; 2] = ["1.0.0", "1.1.0"];

/// The newest supported version: used where the input names none we can speak.
pub const LATEST_VERSION: &str = "1.1.0";
