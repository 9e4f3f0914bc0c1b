//! What the plugin prints: the ADD success result, the VERSION result and the error result of
//! spec 1.1 (section 5), and the reading of a `prevResult`.

use serde::Serialize;
use serde_json::{Map, Value};

use crate::error::{Error, wrong_type};
use crate::version::SUPPORTED_VERSIONS;

/// The ADD success result. Also the typed view of a `prevResult`, of which CHECK reads
/// `interfaces` and `ips`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CniResult {
    pub cni_version: String,
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<Route>,
    /// This plugin configures no DNS; the spec still wants the key (the runtime's DNS wins).
    pub dns: Dns,
}

/// One entry of `interfaces`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Interface {
    pub name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub mac: String,
    /// Spec 1.1 only; left out for 1.0.0 results.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// Empty for host interfaces, the `CNI_NETNS` path for the pod's.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub sandbox: String,
}

/// One entry of `ips`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IpConfig {
    /// `address/prefix`.
    pub address: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// Index into `interfaces`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

/// One entry of `routes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Route {
    pub dst: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gw: Option<String>,
}

/// `dns`; always empty from this plugin.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Dns {}

impl CniResult {
    /// Reads a `prevResult`. Only the fields CHECK needs are typed; errors name the field as
    /// `prevResult.ips[0].address`.
    pub fn from_value(v: &Value) -> Result<CniResult, Error> {
        let obj = object(v, "prevResult")?;
        let cni_version = opt_str(obj, "prevResult", "cniVersion")?.unwrap_or_default();
        let interfaces = array(obj, "prevResult", "interfaces")?
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let at = format!("prevResult.interfaces[{i}]");
                let o = object(item, &at)?;
                Ok(Interface {
                    name: opt_str(o, &at, "name")?.ok_or_else(|| missing(&at, "name"))?,
                    mac: opt_str(o, &at, "mac")?.unwrap_or_default(),
                    mtu: None,
                    sandbox: opt_str(o, &at, "sandbox")?.unwrap_or_default(),
                })
            })
            .collect::<Result<Vec<_>, Error>>()?;
        let ips = array(obj, "prevResult", "ips")?
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let at = format!("prevResult.ips[{i}]");
                let o = object(item, &at)?;
                let interface = match o.get("interface") {
                    None | Some(Value::Null) => None,
                    Some(Value::Number(n)) => {
                        match n.as_u64().and_then(|n| usize::try_from(n).ok()) {
                            Some(n) => Some(n),
                            None => {
                                return Err(wrong_type(
                                    &format!("{at}.interface"),
                                    "a non-negative integer",
                                    &Value::Number(n.clone()),
                                ));
                            }
                        }
                    }
                    Some(other) => {
                        return Err(wrong_type(
                            &format!("{at}.interface"),
                            "a non-negative integer",
                            other,
                        ));
                    }
                };
                Ok(IpConfig {
                    address: opt_str(o, &at, "address")?.ok_or_else(|| missing(&at, "address"))?,
                    gateway: opt_str(o, &at, "gateway")?,
                    interface,
                })
            })
            .collect::<Result<Vec<_>, Error>>()?;
        let routes = array(obj, "prevResult", "routes")?
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let at = format!("prevResult.routes[{i}]");
                let o = object(item, &at)?;
                Ok(Route {
                    dst: opt_str(o, &at, "dst")?.ok_or_else(|| missing(&at, "dst"))?,
                    gw: opt_str(o, &at, "gw")?,
                })
            })
            .collect::<Result<Vec<_>, Error>>()?;
        Ok(CniResult {
            cni_version,
            interfaces,
            ips,
            routes,
            dns: Dns {},
        })
    }

    /// ADD after an earlier plugin: the spec wants the previous result passed on with ours
    /// added. Works on the raw JSON so that fields this plugin does not know survive; our
    /// `interface` indexes are shifted past the interfaces already listed.
    pub fn appended_to(&self, prev: &Value) -> Value {
        let mut out = match prev {
            Value::Object(map) => map.clone(),
            _ => Map::new(),
        };
        let offset = out
            .get("interfaces")
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
        let mut push = |key: &str, items: Vec<Value>| {
            let entry = out
                .entry(key.to_owned())
                .or_insert_with(|| Value::Array(Vec::new()));
            if !entry.is_array() {
                *entry = Value::Array(Vec::new());
            }
            if let Value::Array(list) = entry {
                list.extend(items);
            }
        };
        push("interfaces", self.interfaces.iter().map(to_value).collect());
        push(
            "ips",
            self.ips
                .iter()
                .map(|ip| {
                    let mut ip = ip.clone();
                    ip.interface = ip.interface.map(|i| i.saturating_add(offset));
                    to_value(&ip)
                })
                .collect(),
        );
        push("routes", self.routes.iter().map(to_value).collect());
        out.insert("cniVersion".into(), Value::String(self.cni_version.clone()));
        out.entry("dns".to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
        Value::Object(out)
    }
}

fn to_value<T: Serialize>(item: &T) -> Value {
    // Serialising these plain structs cannot fail (string keys, no maps with other keys).
    serde_json::to_value(item).unwrap_or(Value::Null)
}

fn object<'a>(v: &'a Value, at: &str) -> Result<&'a Map<String, Value>, Error> {
    match v {
        Value::Object(o) => Ok(o),
        other => Err(wrong_type(at, "an object", other)),
    }
}

fn array<'a>(obj: &'a Map<String, Value>, at: &str, key: &str) -> Result<&'a [Value], Error> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(a)) => Ok(a),
        Some(other) => Err(wrong_type(&format!("{at}.{key}"), "an array", other)),
    }
}

fn opt_str(obj: &Map<String, Value>, at: &str, key: &str) -> Result<Option<String>, Error> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(wrong_type(&format!("{at}.{key}"), "a string", other)),
    }
}

fn missing(at: &str, key: &str) -> Error {
    Error::InvalidConfig {
        field: format!("{at}.{key}"),
        problem: "is missing".into(),
    }
}

/// The error result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorResult {
    pub cni_version: String,
    pub code: u32,
    pub msg: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl ErrorResult {
    pub fn new(cni_version: &str, error: &Error) -> Self {
        ErrorResult {
            cni_version: cni_version.to_owned(),
            code: error.code(),
            msg: error.to_string(),
            details: error.details(),
        }
    }
}

/// The VERSION result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VersionResult {
    pub cni_version: String,
    pub supported_versions: Vec<String>,
}

impl VersionResult {
    /// The spec wants the input's `cniVersion` echoed.
    pub fn new(cni_version: &str) -> Self {
        VersionResult {
            cni_version: cni_version.to_owned(),
            supported_versions: SUPPORTED_VERSIONS.iter().map(|s| (*s).to_owned()).collect(),
        }
    }
}

/// JSON for stdout, newline-terminated for people reading logs.
pub fn to_line<T: Serialize>(value: &T) -> String {
    match serde_json::to_string(value) {
        Ok(mut s) => {
            s.push('\n');
            s
        }
        // Not reachable for the types above; still print something the runtime can parse.
        Err(e) => format!(
            "{{\"cniVersion\":\"1.1.0\",\"code\":5,\"msg\":{:?}}}\n",
            format!("cannot encode result: {e}")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> CniResult {
        CniResult {
            cni_version: "1.1.0".into(),
            interfaces: vec![
                Interface {
                    name: "syv0123456789".into(),
                    mac: "aa:bb:cc:dd:ee:01".into(),
                    mtu: Some(1450),
                    sandbox: String::new(),
                },
                Interface {
                    name: "eth0".into(),
                    mac: "aa:bb:cc:dd:ee:02".into(),
                    mtu: Some(1450),
                    sandbox: "/run/netns/pod".into(),
                },
            ],
            ips: vec![IpConfig {
                address: "198.18.200.2/24".into(),
                gateway: Some("198.18.200.1".into()),
                interface: Some(1),
            }],
            routes: vec![Route {
                dst: "198.18.0.0/15".into(),
                gw: Some("198.18.200.1".into()),
            }],
            dns: Dns {},
        }
    }

    #[test]
    fn add_result_shape() {
        assert_eq!(
            serde_json::to_value(sample()).unwrap(),
            json!({
                "cniVersion": "1.1.0",
                "interfaces": [
                    {"name": "syv0123456789", "mac": "aa:bb:cc:dd:ee:01", "mtu": 1450},
                    {"name": "eth0", "mac": "aa:bb:cc:dd:ee:02", "mtu": 1450, "sandbox": "/run/netns/pod"}
                ],
                "ips": [{"address": "198.18.200.2/24", "gateway": "198.18.200.1", "interface": 1}],
                "routes": [{"dst": "198.18.0.0/15", "gw": "198.18.200.1"}],
                "dns": {}
            })
        );
    }

    #[test]
    fn prev_result_round_trip() {
        let v = serde_json::to_value(sample()).unwrap();
        let mut back = CniResult::from_value(&v).unwrap();
        // mtu is not read back: CHECK does not need it.
        for i in &mut back.interfaces {
            i.mtu = Some(1450);
        }
        assert_eq!(back, sample());
    }

    #[test]
    fn prev_result_errors_name_the_field() {
        for (v, field) in [
            (json!({"interfaces": {}}), "prevResult.interfaces"),
            (
                json!({"interfaces": [{"mac": "x"}]}),
                "prevResult.interfaces[0].name",
            ),
            (
                json!({"interfaces": [{"name": 1}]}),
                "prevResult.interfaces[0].name",
            ),
            (
                json!({"ips": [{"address": "a", "interface": -1}]}),
                "prevResult.ips[0].interface",
            ),
            (
                json!({"ips": [{"address": "a", "interface": "1"}]}),
                "prevResult.ips[0].interface",
            ),
            (json!({"ips": [{}]}), "prevResult.ips[0].address"),
            (json!({"routes": [{"gw": "x"}]}), "prevResult.routes[0].dst"),
            (json!({"cniVersion": 1}), "prevResult.cniVersion"),
        ] {
            match CniResult::from_value(&v) {
                Err(Error::InvalidConfig { field: f, .. }) => assert_eq!(f, field, "{v}"),
                other => panic!("{v}: {other:?}"),
            }
        }
    }

    #[test]
    fn appending_shifts_interface_indexes_and_keeps_unknown_fields() {
        let prev = json!({
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "other0", "x-custom": 1}],
            "ips": [{"address": "198.18.250.2/24", "interface": 0}],
            "dns": {"nameservers": ["198.18.250.53"]},
            "custom": true
        });
        let out = sample().appended_to(&prev);
        assert_eq!(out["cniVersion"], "1.1.0");
        assert_eq!(out["interfaces"].as_array().unwrap().len(), 3);
        assert_eq!(out["interfaces"][0]["x-custom"], 1);
        assert_eq!(out["ips"][0]["interface"], 0);
        assert_eq!(out["ips"][1]["interface"], 2);
        assert_eq!(out["routes"][0]["dst"], "198.18.0.0/15");
        assert_eq!(out["dns"]["nameservers"][0], "198.18.250.53");
        assert_eq!(out["custom"], true);
    }

    #[test]
    fn error_and_version_shapes() {
        let e = Error::InvalidConfig {
            field: "name".into(),
            problem: "is missing".into(),
        };
        assert_eq!(
            serde_json::to_value(ErrorResult::new("1.0.0", &e)).unwrap(),
            json!({"cniVersion": "1.0.0", "code": 7, "msg": "network configuration field \"name\" is missing"})
        );
        let e = Error::Agent {
            request: "attach".into(),
            code: 11,
            msg: "later".into(),
            details: "agent starting".into(),
        };
        let v = serde_json::to_value(ErrorResult::new("1.1.0", &e)).unwrap();
        assert_eq!(v["code"], 11);
        assert_eq!(v["details"], "agent starting");
        assert_eq!(
            serde_json::to_value(VersionResult::new("1.0.0")).unwrap(),
            json!({"cniVersion": "1.0.0", "supportedVersions": ["1.0.0", "1.1.0"]})
        );
        assert!(to_line(&VersionResult::new("1.1.0")).ends_with("}\n"));
    }
}
