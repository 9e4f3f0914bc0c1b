//! The crate's one error type. Every variant carries a CNI error code (`code()`), because the
//! runtime decides what to do next (retry, clean up, give up) from that number alone.

use std::io;
use std::path::PathBuf;

use serde_json::Value;

/// Codes 0-99 are the spec's; 100+ are ours. Named so the mapping is visible in one place.
pub mod code {
    /// The network configuration asks for a spec version we do not speak.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// A well-known configuration field that this plugin does not implement.
    pub const UNSUPPORTED_FIELD: u32 = 2;
    /// The container (its network namespace) is gone; the runtime need not clean up.
    pub const CONTAINER_UNKNOWN: u32 = 3;
    /// A `CNI_*` environment variable is missing or malformed.
    pub const INVALID_ENVIRONMENT: u32 = 4;
    /// Reading or writing a file or socket failed.
    pub const IO_FAILURE: u32 = 5;
    /// Stdin is not JSON.
    pub const DECODE_FAILURE: u32 = 6;
    /// The JSON decodes but a field is missing or wrong.
    pub const INVALID_CONFIG: u32 = 7;
    /// A transient condition; the runtime should retry.
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// STATUS: ADD cannot be served now.
    pub const NOT_AVAILABLE: u32 = 50;
    /// Every candidate address of a block is taken.
    pub const NO_FREE_ADDRESS: u32 = 100;
    /// The node agent answered something this plugin cannot use.
    pub const BAD_AGENT_ANSWER: u32 = 101;
    /// An `ip`/`nsenter` command failed or printed something unexpected.
    pub const COMMAND_FAILED: u32 = 102;
    /// CHECK found the attachment not as `prevResult` describes it.
    pub const CHECK_FAILED: u32 = 103;
}

/// Everything that can go wrong in one plugin invocation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `cniVersion` names a version outside [`crate::version::SUPPORTED_VERSIONS`].
    #[error(
        "network configuration field \"cniVersion\" has unsupported value {version:?} (this plugin supports {supported})"
    )]
    IncompatibleVersion { version: String, supported: String },

    /// A well-known field whose semantics this plugin does not provide; silently ignoring it
    /// would leave the administrator believing it works.
    #[error("network configuration field {field:?} with value {value} is not supported: {why}")]
    UnsupportedField {
        field: String,
        value: String,
        why: &'static str,
    },

    /// The network namespace of the container does not exist (any more).
    #[error("container {container_id:?}: network namespace {netns:?} (CNI_NETNS) does not exist")]
    ContainerUnknown {
        container_id: String,
        netns: PathBuf,
    },

    /// A required `CNI_*` variable is unset, empty or malformed.
    #[error("environment variable {var} {problem}")]
    InvalidEnvironment { var: &'static str, problem: String },

    /// A file, directory or stream operation failed.
    #[error("cannot {action} {path:?}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// The node agent's socket could not be used.
    #[error("cannot {action} node agent socket {socket:?}: {source}")]
    AgentIo {
        action: &'static str,
        socket: PathBuf,
        #[source]
        source: io::Error,
    },

    /// Stdin is not JSON; serde's message says where (line and column).
    #[error("cannot decode the network configuration on stdin: {source}")]
    Decode {
        #[source]
        source: serde_json::Error,
    },

    /// The configuration decodes but a field is missing or has a wrong value.
    #[error("network configuration field {field:?} {problem}")]
    InvalidConfig { field: String, problem: String },

    /// The agent refused; its code and words are passed through unchanged so that, e.g., its
    /// "try again later" (11) reaches the runtime as such.
    #[error("node agent refused {request}: {msg}")]
    Agent {
        request: String,
        code: u32,
        msg: String,
        details: String,
    },

    /// STATUS: the plugin cannot serve ADD now.
    #[error("plugin not available: {reason}")]
    NotAvailable { reason: String },

    /// IPAM exhausted every block of one family.
    #[error("no free address in {cidr} for pod {namespace}/{pod}")]
    NoFreeAddress {
        cidr: String,
        namespace: String,
        pod: String,
    },

    /// The agent's answer decodes but is unusable (bad CIDR, gateway outside its block, ...).
    #[error("node agent at {socket:?} answered {field} = {value:?}: {problem}")]
    BadAgentAnswer {
        socket: PathBuf,
        field: String,
        value: String,
        problem: String,
    },

    /// An external command failed; the command line and its stderr say what and why.
    #[error("command `{command}` failed: {problem}")]
    Command { command: String, problem: String },

    /// CHECK found a difference between `prevResult` and the machine.
    #[error("CHECK of container {container_id:?} interface {ifname:?}: {problem}")]
    CheckFailed {
        container_id: String,
        ifname: String,
        problem: String,
    },

    /// GC keeps going after a failure (the spec asks it to remove as much as it can) and
    /// reports every failure at the end; the first one's code stands for all.
    #[error("GC could not release everything: {}", list(.errors))]
    Incomplete { errors: Vec<Error> },
}

fn list(errors: &[Error]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl Error {
    /// The CNI error code the runtime sees.
    pub fn code(&self) -> u32 {
        match self {
            Error::IncompatibleVersion { .. } => code::INCOMPATIBLE_VERSION,
            Error::UnsupportedField { .. } => code::UNSUPPORTED_FIELD,
            Error::ContainerUnknown { .. } => code::CONTAINER_UNKNOWN,
            Error::InvalidEnvironment { .. } => code::INVALID_ENVIRONMENT,
            Error::Io { .. } | Error::AgentIo { .. } => code::IO_FAILURE,
            Error::Decode { .. } => code::DECODE_FAILURE,
            Error::InvalidConfig { .. } => code::INVALID_CONFIG,
            Error::Agent { code, .. } => *code,
            Error::NotAvailable { .. } => code::NOT_AVAILABLE,
            Error::NoFreeAddress { .. } => code::NO_FREE_ADDRESS,
            Error::BadAgentAnswer { .. } => code::BAD_AGENT_ANSWER,
            Error::Command { .. } => code::COMMAND_FAILED,
            Error::CheckFailed { .. } => code::CHECK_FAILED,
            Error::Incomplete { errors } => errors.first().map_or(code::IO_FAILURE, Error::code),
        }
    }

    /// The spec's "longer message": whatever the one-line message leaves out.
    pub fn details(&self) -> String {
        match self {
            Error::Agent { details, .. } => details.clone(),
            Error::ContainerUnknown { .. } => {
                "the runtime need not call DEL for this container".to_owned()
            }
            Error::Decode { .. } => {
                "stdin must hold one JSON object: the plugin configuration".to_owned()
            }
            Error::UnsupportedField { .. } => {
                "remove the field from this plugin's entry in the conflist".to_owned()
            }
            Error::Incomplete { errors } => format!("{} failure(s)", errors.len()),
            _ => String::new(),
        }
    }
}

/// "field X must be a string, not the number 5".
pub(crate) fn wrong_type(field: &str, expected: &str, got: &Value) -> Error {
    Error::InvalidConfig {
        field: field.into(),
        problem: format!("must be {expected}, not {} {got}", value_kind(got)),
    }
}

/// A JSON value's kind as an error message names it ("the number").
pub(crate) fn value_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "the boolean",
        Value::Number(_) => "the number",
        Value::String(_) => "the string",
        Value::Array(_) => "the array",
        Value::Object(_) => "the object",
    }
}
