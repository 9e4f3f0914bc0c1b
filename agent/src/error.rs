//! The one error type of the node agent.

/// Everything the agent can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A kernel-programming command failed.
    #[error("`{command}` failed: {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// Its standard error.
        stderr: String,
    },
    /// A program could not be started.
    #[error("cannot run {program}: {source}; is it installed (iproute2, nftables)?")]
    Spawn {
        /// The program.
        program: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A program the agent needs is not installed.
    #[error("cannot run {program}: {source}; install the Debian package `{package}`")]
    Missing {
        /// The program.
        program: String,
        /// The package that has it.
        package: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Output of a command could not be read.
    #[error("cannot parse the output of `{command}`: {source}")]
    Parse {
        /// The command.
        command: String,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// A netlink exchange with nf_tables failed (nothing of the transaction was applied).
    #[error("nf_tables netlink {op} on table inet switchyard: {message}")]
    Netlink {
        /// What was done.
        op: &'static str,
        /// Why.
        message: String,
    },
    /// The read-back of a set (or of the chains) over netlink failed or did not decode.
    #[error("nf_tables netlink read-back of inet switchyard {set}: {message}")]
    Dump {
        /// The set or map (`(chains)` for the chain dump).
        set: String,
        /// What went wrong, naming the attribute.
        message: String,
    },
    /// A file operation failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was done.
        op: &'static str,
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// No upstream resolver answered a forwarded question.
    #[error("DNS question {question}: {reason}")]
    Upstream {
        /// The question's name.
        question: String,
        /// What went wrong, per upstream.
        reason: String,
    },
    /// A DNS socket could not be set up.
    #[error("DNS server on {addr} ({transport}): {source}")]
    DnsSocket {
        /// The address.
        addr: std::net::SocketAddr,
        /// `udp` or `tcp`.
        transport: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A DNS serving thread (or its runtime) could not be started.
    #[error("DNS serving thread: {source}")]
    DnsThread {
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A flag value the agent cannot use.
    #[error("flag {flag}: {value:?}: {reason}")]
    Flag {
        /// The flag.
        flag: &'static str,
        /// Its value.
        value: String,
        /// Why.
        reason: String,
    },
}

impl Error {
    /// A short stable label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Command { .. } => "command",
            Error::Spawn { .. } => "spawn",
            Error::Parse { .. } => "parse",
            Error::Missing { .. } => "missing",
            Error::Io { .. } => "io",
            Error::Netlink { .. } => "netlink",
            Error::Dump { .. } => "dump",
            Error::Upstream { .. } => "upstream",
            Error::DnsSocket { .. } => "dns_socket",
            Error::DnsThread { .. } => "dns_thread",
            Error::Flag { .. } => "flag",
        }
    }
}

/// `Result` with the agent's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;
