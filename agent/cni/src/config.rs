//! Inputs of one invocation: the `CNI_*` environment and the plugin configuration on stdin.
//!
//! Parsing is strict about what the plugin uses (so a typo fails loudly with the field's name)
//! and lenient about everything else (the spec lets runtimes add fields, and CNI_ARGS carries
//! keys meant for other plugins).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::error::{Error, value_kind, wrong_type};
use crate::protocol::{check_ifname, is_safe_name};
use crate::result::CniResult;
use crate::version::SUPPORTED_VERSIONS;

/// Where the node agent listens unless the configuration says otherwise.
pub const DEFAULT_AGENT_SOCKET: &str = "/run/switchyard/agent.sock";

/// Where allocations live unless the configuration says otherwise.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/switchyard/cni";

/// The `CNI_COMMAND` values of spec 1.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Status,
    Version,
    Gc,
}

impl Command {
    /// The `CNI_COMMAND` spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Status => "STATUS",
            Command::Version => "VERSION",
            Command::Gc => "GC",
        }
    }
}

/// The process environment as the plugin sees it. Values that are not UTF-8 are kept as
/// "present but unreadable" so the error can say so instead of claiming the variable is unset.
#[derive(Debug, Clone, Default)]
pub struct Env {
    vars: BTreeMap<String, Option<String>>,
}

impl Env {
    /// From `std::env::vars_os()`.
    pub fn from_os(vars: impl IntoIterator<Item = (OsString, OsString)>) -> Self {
        let vars = vars
            .into_iter()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok())))
            .collect();
        Env { vars }
    }

    /// From string pairs (tests, and callers that already hold a map).
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let vars = pairs
            .into_iter()
            .map(|(k, v)| (k.to_owned(), Some(v.to_owned())))
            .collect();
        Env { vars }
    }

    /// The value of `var`; `Ok(None)` when unset or empty (the spec treats both as absent).
    fn get(&self, var: &'static str) -> Result<Option<&str>, Error> {
        match self.vars.get(var) {
            None => Ok(None),
            Some(None) => Err(Error::InvalidEnvironment {
                var,
                problem: "is not valid UTF-8".into(),
            }),
            Some(Some(v)) if v.is_empty() => Ok(None),
            Some(Some(v)) => Ok(Some(v)),
        }
    }

    fn require(&self, var: &'static str, command: Command) -> Result<&str, Error> {
        self.get(var)?.ok_or_else(|| Error::InvalidEnvironment {
            var,
            problem: format!("is not set (required for {})", command.as_str()),
        })
    }
}

/// Reads `CNI_COMMAND`.
pub fn command(env: &Env) -> Result<Command, Error> {
    let value = env
        .get("CNI_COMMAND")?
        .ok_or_else(|| Error::InvalidEnvironment {
            var: "CNI_COMMAND",
            problem: "is not set (expected ADD, DEL, CHECK, STATUS, VERSION or GC)".into(),
        })?;
    match value {
        "ADD" => Ok(Command::Add),
        "DEL" => Ok(Command::Del),
        "CHECK" => Ok(Command::Check),
        "STATUS" => Ok(Command::Status),
        "VERSION" => Ok(Command::Version),
        "GC" => Ok(Command::Gc),
        other => Err(Error::InvalidEnvironment {
            var: "CNI_COMMAND",
            problem: format!(
                "has unknown value {other:?} (expected ADD, DEL, CHECK, STATUS, VERSION or GC)"
            ),
        }),
    }
}

/// The attachment parameters of ADD, DEL and CHECK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    pub container_id: String,
    /// Required for ADD and CHECK; DEL cleans up without it.
    pub netns: Option<PathBuf>,
    pub ifname: String,
    pub args: CniArgs,
}

/// Reads the attachment parameters `command` requires.
pub fn invocation(env: &Env, command: Command) -> Result<Invocation, Error> {
    let container_id = env.require("CNI_CONTAINERID", command)?;
    if !is_valid_container_id(container_id) {
        return Err(Error::InvalidEnvironment {
            var: "CNI_CONTAINERID",
            problem: format!(
                "has invalid value {container_id:?}: must start with a letter or digit, followed by letters, digits, '_', '.' or '-'"
            ),
        });
    }
    let netns = match command {
        Command::Add | Command::Check => Some(env.require("CNI_NETNS", command)?),
        _ => env.get("CNI_NETNS")?,
    };
    let netns = match netns {
        Some(path) if !Path::new(path).is_absolute() => {
            return Err(Error::InvalidEnvironment {
                var: "CNI_NETNS",
                problem: format!("has value {path:?}, which is not an absolute path"),
            });
        }
        other => other.map(PathBuf::from),
    };
    let ifname = env.require("CNI_IFNAME", command)?;
    check_ifname(ifname).map_err(|problem| Error::InvalidEnvironment {
        var: "CNI_IFNAME",
        problem: format!("has invalid value {ifname:?}: {problem}"),
    })?;
    let args = match env.get("CNI_ARGS")? {
        Some(raw) => parse_cni_args(raw)?,
        None => CniArgs::default(),
    };
    Ok(Invocation {
        container_id: container_id.to_owned(),
        netns,
        ifname: ifname.to_owned(),
        args,
    })
}

/// The spec's container-ID rule. It also keeps IDs free of newlines and slashes, which matters
/// because IDs are written into allocation files and hashed into interface names.
pub fn is_valid_container_id(id: &str) -> bool {
    let mut chars = id.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// The `CNI_ARGS` keys this plugin reads; every other key is ignored because CNI_ARGS is shared
/// by every plugin of the chain.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniArgs {
    pub pod_namespace: Option<String>,
    pub pod_name: Option<String>,
    /// `IgnoreUnknown=true`: besides unknown keys (always ignored here), also skip malformed
    /// pairs, as libcni's loader does when asked to.
    pub ignore_unknown: bool,
}

/// Parses `K1=V1;K2=V2`. Empty segments (a trailing `;`) are skipped. A segment without `=`
/// is an error unless `IgnoreUnknown` is true anywhere in the string.
pub fn parse_cni_args(raw: &str) -> Result<CniArgs, Error> {
    let mut args = CniArgs::default();
    let mut malformed = None;
    for pair in raw.split(';') {
        if pair.is_empty() {
            continue;
        }
        let Some((key, value)) = pair.split_once('=') else {
            malformed.get_or_insert(pair);
            continue;
        };
        match key {
            "K8S_POD_NAMESPACE" => args.pod_namespace = Some(value.to_owned()),
            "K8S_POD_NAME" => args.pod_name = Some(value.to_owned()),
            "IgnoreUnknown" => {
                args.ignore_unknown = match value.to_ascii_lowercase().as_str() {
                    "1" | "true" => true,
                    "0" | "false" => false,
                    _ => {
                        return Err(Error::InvalidEnvironment {
                            var: "CNI_ARGS",
                            problem: format!(
                                "has IgnoreUnknown={value:?}; expected true, false, 1 or 0"
                            ),
                        });
                    }
                }
            }
            "" => {
                malformed.get_or_insert(pair);
            }
            _ => {}
        }
    }
    match malformed {
        Some(pair) if !args.ignore_unknown => Err(Error::InvalidEnvironment {
            var: "CNI_ARGS",
            problem: format!("has malformed pair {pair:?}; expected KEY=VALUE"),
        }),
        _ => Ok(args),
    }
}

/// One entry of `cni.dev/valid-attachments` (GC).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ValidAttachment {
    pub container_id: String,
    pub ifname: String,
}

/// The plugin configuration, as far as this plugin reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    pub agent_socket: PathBuf,
    pub state_dir: PathBuf,
    /// Typed, for CHECK.
    pub prev_result: Option<CniResult>,
    /// Untouched, for ADD, which must pass through fields it does not know.
    pub prev_result_raw: Option<Value>,
    /// Present on GC.
    pub valid_attachments: Option<Vec<ValidAttachment>>,
}

/// Stdin decoded as JSON but not validated: the error result needs the version before the rest
/// can be judged.
pub fn decode(stdin: &[u8]) -> Result<Map<String, Value>, Error> {
    match serde_json::from_slice::<Value>(stdin) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(Error::InvalidConfig {
            field: "(top level)".into(),
            problem: format!("must be a JSON object, not {}", value_kind(&other)),
        }),
        Err(source) => Err(Error::Decode { source }),
    }
}

/// The configuration's `cniVersion` if it is one we speak: the version of our error results.
pub fn spoken_version(map: &Map<String, Value>) -> Option<&'static str> {
    let v = map.get("cniVersion")?.as_str()?;
    SUPPORTED_VERSIONS.into_iter().find(|s| *s == v)
}

/// Validates the decoded configuration.
pub fn netconf(map: &Map<String, Value>) -> Result<NetConf, Error> {
    let cni_version = required_str(map, "cniVersion")?;
    if !SUPPORTED_VERSIONS.contains(&cni_version) {
        return Err(Error::IncompatibleVersion {
            version: cni_version.to_owned(),
            supported: SUPPORTED_VERSIONS.join(", "),
        });
    }
    let name = required_str(map, "name")?;
    if !is_safe_name(name) {
        return Err(Error::InvalidConfig {
            field: "name".into(),
            problem: format!(
                "has invalid value {name:?}: must start with a letter or digit, followed by letters, digits, '_', '.' or '-'"
            ),
        });
    }
    let plugin_type = required_str(map, "type")?;
    if plugin_type.contains('/') || plugin_type.contains('\\') {
        return Err(Error::InvalidConfig {
            field: "type".into(),
            problem: format!("has invalid value {plugin_type:?}: must not contain '/' or '\\'"),
        });
    }
    // This plugin is its own IPAM: a delegated `ipam` section would be silently ignored, and
    // the administrator would wonder why its ranges are not used.
    if let Some(ipam) = map.get("ipam") {
        return Err(Error::UnsupportedField {
            field: "ipam".into(),
            value: ipam.to_string(),
            why: "addresses come from the node's blocks via the Switchyard agent",
        });
    }
    match map.get("ipMasq") {
        None | Some(Value::Bool(false)) | Some(Value::Null) => {}
        Some(Value::Bool(true)) => {
            return Err(Error::UnsupportedField {
                field: "ipMasq".into(),
                value: "true".into(),
                why: "masquerading is the agent's policy, not the plugin's",
            });
        }
        Some(other) => return Err(wrong_type("ipMasq", "a boolean", other)),
    }
    let agent_socket = absolute_path(map, "agentSocket", DEFAULT_AGENT_SOCKET)?;
    let state_dir = absolute_path(map, "stateDir", DEFAULT_STATE_DIR)?;
    let (prev_result, prev_result_raw) = match map.get("prevResult") {
        None | Some(Value::Null) => (None, None),
        Some(raw) => (Some(CniResult::from_value(raw)?), Some(raw.clone())),
    };
    let valid_attachments = match map.get("cni.dev/valid-attachments") {
        None | Some(Value::Null) => None,
        Some(v) => Some(valid_attachments(v)?),
    };
    Ok(NetConf {
        cni_version: cni_version.to_owned(),
        name: name.to_owned(),
        agent_socket,
        state_dir,
        prev_result,
        prev_result_raw,
        valid_attachments,
    })
}

fn valid_attachments(v: &Value) -> Result<Vec<ValidAttachment>, Error> {
    const FIELD: &str = "cni.dev/valid-attachments";
    let Value::Array(items) = v else {
        return Err(wrong_type(FIELD, "an array", v));
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let field = format!("{FIELD}[{i}]");
            let Value::Object(obj) = item else {
                return Err(wrong_type(&field, "an object", item));
            };
            let get = |key: &str| match obj.get(key) {
                Some(Value::String(s)) => Ok(s.clone()),
                Some(other) => Err(wrong_type(&format!("{field}.{key}"), "a string", other)),
                None => Err(Error::InvalidConfig {
                    field: format!("{field}.{key}"),
                    problem: "is missing".into(),
                }),
            };
            Ok(ValidAttachment {
                container_id: get("containerID")?,
                ifname: get("ifname")?,
            })
        })
        .collect()
}

fn required_str<'a>(map: &'a Map<String, Value>, field: &str) -> Result<&'a str, Error> {
    match map.get(field) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s),
        Some(Value::String(_)) => Err(Error::InvalidConfig {
            field: field.into(),
            problem: "must not be empty".into(),
        }),
        Some(other) => Err(wrong_type(field, "a string", other)),
        None => Err(Error::InvalidConfig {
            field: field.into(),
            problem: "is missing".into(),
        }),
    }
}

fn absolute_path(map: &Map<String, Value>, field: &str, default: &str) -> Result<PathBuf, Error> {
    match map.get(field) {
        None | Some(Value::Null) => Ok(PathBuf::from(default)),
        Some(Value::String(s)) if Path::new(s).is_absolute() => Ok(PathBuf::from(s)),
        Some(Value::String(s)) => Err(Error::InvalidConfig {
            field: field.into(),
            problem: format!("has value {s:?}, which is not an absolute path"),
        }),
        Some(other) => Err(wrong_type(field, "a string", other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::code;

    fn env(pairs: &[(&'static str, &'static str)]) -> Env {
        Env::from_pairs(pairs.iter().copied())
    }

    fn env_var_of(e: Error) -> &'static str {
        assert_eq!(e.code(), code::INVALID_ENVIRONMENT, "{e}");
        match e {
            Error::InvalidEnvironment { var, .. } => var,
            other => panic!("expected InvalidEnvironment, got {other:?}"),
        }
    }

    #[test]
    fn commands() {
        for (value, expected) in [
            ("ADD", Command::Add),
            ("DEL", Command::Del),
            ("CHECK", Command::Check),
            ("STATUS", Command::Status),
            ("VERSION", Command::Version),
            ("GC", Command::Gc),
        ] {
            assert_eq!(command(&env(&[("CNI_COMMAND", value)])).unwrap(), expected);
        }
        assert_eq!(env_var_of(command(&env(&[])).unwrap_err()), "CNI_COMMAND");
        assert_eq!(
            env_var_of(command(&env(&[("CNI_COMMAND", "")])).unwrap_err()),
            "CNI_COMMAND"
        );
        let e = command(&env(&[("CNI_COMMAND", "add")])).unwrap_err();
        assert!(e.to_string().contains("\"add\""), "{e}");
        assert_eq!(env_var_of(e), "CNI_COMMAND");
    }

    #[test]
    fn non_utf8_is_named_not_called_unset() {
        use std::os::unix::ffi::OsStringExt;
        let e = Env::from_os([(
            OsString::from("CNI_COMMAND"),
            OsString::from_vec(vec![0xff, 0xfe]),
        )]);
        let err = command(&e).unwrap_err();
        assert!(err.to_string().contains("UTF-8"), "{err}");
    }

    const FULL: [(&str, &str); 5] = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "abc123"),
        ("CNI_NETNS", "/run/netns/x"),
        ("CNI_IFNAME", "eth0"),
        (
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=web-0",
        ),
    ];

    fn without(var: &str) -> Env {
        Env::from_pairs(FULL.iter().copied().filter(|(k, _)| *k != var))
    }

    fn with(var: &'static str, value: &'static str) -> Env {
        Env::from_pairs(
            FULL.iter()
                .copied()
                .filter(|(k, _)| *k != var)
                .chain([(var, value)]),
        )
    }

    #[test]
    fn invocation_reads_everything() {
        let inv = invocation(&Env::from_pairs(FULL), Command::Add).unwrap();
        assert_eq!(inv.container_id, "abc123");
        assert_eq!(inv.netns.as_deref(), Some(Path::new("/run/netns/x")));
        assert_eq!(inv.ifname, "eth0");
        assert_eq!(inv.args.pod_namespace.as_deref(), Some("ns"));
        assert_eq!(inv.args.pod_name.as_deref(), Some("web-0"));
        assert!(inv.args.ignore_unknown);
    }

    #[test]
    fn invocation_errors_name_the_variable() {
        for var in ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"] {
            for cmd in [Command::Add, Command::Check] {
                assert_eq!(env_var_of(invocation(&without(var), cmd).unwrap_err()), var);
            }
        }
        // DEL works without a netns but not without the attachment's identity.
        assert_eq!(
            invocation(&without("CNI_NETNS"), Command::Del)
                .unwrap()
                .netns,
            None
        );
        assert_eq!(
            env_var_of(invocation(&without("CNI_IFNAME"), Command::Del).unwrap_err()),
            "CNI_IFNAME"
        );
        let e = invocation(&without("CNI_CONTAINERID"), Command::Del).unwrap_err();
        assert!(e.to_string().contains("required for DEL"), "{e}");
        for (var, value) in [
            ("CNI_CONTAINERID", "-abc"),
            ("CNI_CONTAINERID", "abc/def"),
            ("CNI_CONTAINERID", "abc\ndef"),
            ("CNI_NETNS", "run/netns/x"),
            ("CNI_IFNAME", "eth0:1"),
            ("CNI_IFNAME", "a-much-too-long-name"),
            ("CNI_IFNAME", ".."),
            ("CNI_ARGS", "K8S_POD_NAME"),
            ("CNI_ARGS", "IgnoreUnknown=maybe"),
        ] {
            let e = invocation(&with(var, value), Command::Add).unwrap_err();
            assert_eq!(env_var_of(e), var, "{var}={value:?}");
        }
    }

    #[test]
    fn container_ids() {
        assert!(is_valid_container_id("a"));
        assert!(is_valid_container_id("3f2a_b.c-d"));
        for bad in ["", "_a", ".a", "a b", "a/b", "a:b", "ä"] {
            assert!(!is_valid_container_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn cni_args() {
        let a = parse_cni_args("K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p;K8S_POD_UID=u;FOO=").unwrap();
        assert_eq!(a.pod_namespace.as_deref(), Some("ns"));
        assert_eq!(a.pod_name.as_deref(), Some("p"));
        assert!(!a.ignore_unknown);
        // Values may contain '='; the first one splits.
        assert_eq!(
            parse_cni_args("K8S_POD_NAME=a=b")
                .unwrap()
                .pod_name
                .as_deref(),
            Some("a=b")
        );
        // Empty segments are nothing.
        assert_eq!(parse_cni_args(";;").unwrap(), CniArgs::default());
        // Malformed pairs fail, unless IgnoreUnknown says otherwise, wherever it appears.
        assert!(parse_cni_args("K8S_POD_NAME=p;junk").is_err());
        assert!(parse_cni_args("=v").is_err());
        let a = parse_cni_args("junk;K8S_POD_NAME=p;IgnoreUnknown=true").unwrap();
        assert!(a.ignore_unknown);
        assert_eq!(a.pod_name.as_deref(), Some("p"));
        assert!(parse_cni_args("IgnoreUnknown=TRUE;junk").is_ok());
        assert!(parse_cni_args("IgnoreUnknown=0;junk").is_err());
        let e = parse_cni_args("IgnoreUnknown=yes").unwrap_err();
        assert!(e.to_string().contains("IgnoreUnknown"), "{e}");
    }

    fn conf(json: &str) -> Result<NetConf, Error> {
        netconf(&decode(json.as_bytes())?)
    }

    fn field_of(json: &str) -> (u32, String) {
        let e = conf(json).unwrap_err();
        let field = match &e {
            Error::InvalidConfig { field, .. } | Error::UnsupportedField { field, .. } => {
                field.clone()
            }
            Error::IncompatibleVersion { .. } => "cniVersion".into(),
            other => panic!("unexpected {other:?}"),
        };
        (e.code(), field)
    }

    const BASE: &str = r#""cniVersion":"1.1.0","name":"switchyard","type":"switchyard-cni""#;

    #[test]
    fn minimal_config_gets_defaults() {
        let c = conf(&format!("{{{BASE}}}")).unwrap();
        assert_eq!(c.cni_version, "1.1.0");
        assert_eq!(c.name, "switchyard");
        assert_eq!(c.agent_socket, Path::new(DEFAULT_AGENT_SOCKET));
        assert_eq!(c.state_dir, Path::new(DEFAULT_STATE_DIR));
        assert!(c.prev_result.is_none());
        assert!(c.valid_attachments.is_none());
    }

    #[test]
    fn full_config() {
        let c = conf(&format!(
            r#"{{{BASE},"agentSocket":"/run/a.sock","stateDir":"/var/lib/x","ipMasq":false,
            "unknownField":{{"ignored":true}},"runtimeConfig":{{}},"args":{{}},
            "prevResult":{{"cniVersion":"1.1.0","interfaces":[{{"name":"eth0","sandbox":"/run/netns/x"}}],
                "ips":[{{"address":"198.18.200.2/24","interface":0}}]}},
            "cni.dev/valid-attachments":[{{"containerID":"c1","ifname":"eth0"}}]}}"#
        ))
        .unwrap();
        assert_eq!(c.agent_socket, Path::new("/run/a.sock"));
        assert_eq!(c.state_dir, Path::new("/var/lib/x"));
        let prev = c.prev_result.unwrap();
        assert_eq!(prev.ips[0].address, "198.18.200.2/24");
        assert_eq!(
            c.valid_attachments.unwrap(),
            vec![ValidAttachment {
                container_id: "c1".into(),
                ifname: "eth0".into()
            }]
        );
        assert!(conf(&format!(r#"{{"cniVersion":"1.0.0",{}}}"#, &BASE[21..])).is_ok());
    }

    #[test]
    fn malformed_json_says_where() {
        let e = decode(b"{\"cniVersion\": \"1.1.0\",\n  \"name\": }").unwrap_err();
        assert_eq!(e.code(), code::DECODE_FAILURE);
        assert!(e.to_string().contains("line 2 column"), "{e}");
        assert_eq!(decode(b"").unwrap_err().code(), code::DECODE_FAILURE);
        assert_eq!(decode(b"[1]").unwrap_err().code(), code::INVALID_CONFIG);
    }

    #[test]
    fn version_errors() {
        assert_eq!(
            field_of(r#"{"cniVersion":"0.4.0","name":"n","type":"t"}"#),
            (code::INCOMPATIBLE_VERSION, "cniVersion".into())
        );
        assert_eq!(
            field_of(r#"{"cniVersion":"1.2.0","name":"n","type":"t"}"#).0,
            code::INCOMPATIBLE_VERSION
        );
        assert_eq!(
            field_of(r#"{"name":"n","type":"t"}"#),
            (code::INVALID_CONFIG, "cniVersion".into())
        );
        assert_eq!(
            field_of(r#"{"cniVersion":1,"name":"n","type":"t"}"#),
            (code::INVALID_CONFIG, "cniVersion".into())
        );
        let map = decode(br#"{"cniVersion":"1.0.0"}"#).unwrap();
        assert_eq!(spoken_version(&map), Some("1.0.0"));
        let map = decode(br#"{"cniVersion":"0.3.1"}"#).unwrap();
        assert_eq!(spoken_version(&map), None);
    }

    #[test]
    fn field_errors_name_the_field() {
        let cases: &[(&str, u32, &str)] = &[
            (r#"{"cniVersion":"1.1.0","type":"t"}"#, 7, "name"),
            (r#"{"cniVersion":"1.1.0","name":"","type":"t"}"#, 7, "name"),
            (
                r#"{"cniVersion":"1.1.0","name":"a/b","type":"t"}"#,
                7,
                "name",
            ),
            (r#"{"cniVersion":"1.1.0","name":"n"}"#, 7, "type"),
            (
                r#"{"cniVersion":"1.1.0","name":"n","type":"../x"}"#,
                7,
                "type",
            ),
            (
                r#"{"cniVersion":"1.1.0","name":"n","type":true}"#,
                7,
                "type",
            ),
            (
                &format!(r#"{{{BASE},"agentSocket":"a.sock"}}"#),
                7,
                "agentSocket",
            ),
            (&format!(r#"{{{BASE},"agentSocket":5}}"#), 7, "agentSocket"),
            (&format!(r#"{{{BASE},"stateDir":"var"}}"#), 7, "stateDir"),
            (
                &format!(r#"{{{BASE},"ipam":{{"type":"host-local"}}}}"#),
                2,
                "ipam",
            ),
            (&format!(r#"{{{BASE},"ipMasq":true}}"#), 2, "ipMasq"),
            (&format!(r#"{{{BASE},"ipMasq":"yes"}}"#), 7, "ipMasq"),
            (&format!(r#"{{{BASE},"prevResult":[]}}"#), 7, "prevResult"),
            (
                &format!(
                    r#"{{{BASE},"prevResult":{{"cniVersion":"1.1.0","ips":[{{"address":5}}]}}}}"#
                ),
                7,
                "prevResult.ips[0].address",
            ),
            (
                &format!(r#"{{{BASE},"cni.dev/valid-attachments":{{}}}}"#),
                7,
                "cni.dev/valid-attachments",
            ),
            (
                &format!(r#"{{{BASE},"cni.dev/valid-attachments":[{{"containerID":"c"}}]}}"#),
                7,
                "cni.dev/valid-attachments[0].ifname",
            ),
            (
                &format!(
                    r#"{{{BASE},"cni.dev/valid-attachments":[{{"containerID":1,"ifname":"e"}}]}}"#
                ),
                7,
                "cni.dev/valid-attachments[0].containerID",
            ),
            (
                &format!(r#"{{{BASE},"cni.dev/valid-attachments":[1]}}"#),
                7,
                "cni.dev/valid-attachments[0]",
            ),
        ];
        for (json, code, field) in cases {
            assert_eq!(field_of(json), (*code, (*field).to_owned()), "{json}");
        }
        let e = conf(&format!(r#"{{{BASE},"ipam":{{"type":"host-local"}}}}"#)).unwrap_err();
        assert!(e.to_string().contains("host-local"), "value named: {e}");
    }
}
