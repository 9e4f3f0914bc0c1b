//! Pure per-object validation of Switchyard specs: every rule of the API contract that one
//! object can decide on its own, returning all violations with their field paths.
//!
//! The webhook answers with these violations and the operator refuses to act on an object
//! that has any, so the API server (schema + CEL), the webhook and the operator agree. The
//! rules that need other objects (overlaps between networks, a virtual IP or hostname held by
//! another route) live in the webhook; the pure halves of them that only need the other
//! object's data (for example "is this IP inside that pool") are here too.

mod names;
mod net;
mod pod_network;
mod selector;
mod service_route;

use std::fmt;

pub use names::{
    is_dns1035_label, is_dns1123_label, is_dns1123_subdomain, is_iana_svc_name, is_label_key,
    is_label_value,
};
pub use net::{parse_cidr, parse_ip};
pub use pod_network::validate_pod_network_update;
pub use service_route::{RouteIdentity, check_virtual_ips_in_pool};

/// One broken rule: the field path (as `kubectl` and the API server write it, e.g.
/// `spec.ports[1].port`) and what is wrong with the value found there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// Path of the offending field, e.g. `spec.podCIDRs[0]`.
    pub field: String,
    /// What is wrong, naming the value, e.g. `"198.18.1.0/16" has host bits set`.
    pub message: String,
}

impl Violation {
    /// A violation at `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// All violations of one object, in field order of discovery.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Violations(pub Vec<Violation>);

impl Violations {
    /// No violations.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Number of violations.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Iterates the violations.
    pub fn iter(&self) -> std::slice::Iter<'_, Violation> {
        self.0.iter()
    }

    /// Whether some violation names exactly `field`.
    pub fn has_field(&self, field: &str) -> bool {
        self.0.iter().any(|v| v.field == field)
    }

    pub(crate) fn push(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(Violation::new(field, message));
    }

    pub(crate) fn extend(&mut self, other: Violations) {
        self.0.extend(other.0);
    }
}

impl fmt::Display for Violations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, v) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{v}")?;
        }
        Ok(())
    }
}

impl IntoIterator for Violations {
    type Item = Violation;
    type IntoIter = std::vec::IntoIter<Violation>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

/// Decodes an object from JSON; when it does not decode (a missing required field, an unknown
/// enum value, a wrong type), the violation names the field that broke it.
pub fn decode<K: serde::de::DeserializeOwned>(value: serde_json::Value) -> Result<K, Violation> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." { String::new() } else { path };
        let msg = e.into_inner().to_string();
        // serde names the missing field in the message; name it in the path as well.
        match msg
            .strip_prefix("missing field `")
            .and_then(|r| r.split_once('`'))
        {
            Some((name, _)) if field.is_empty() => Violation::new(name, msg.clone()),
            Some((name, _)) => Violation::new(format!("{field}.{name}"), msg.clone()),
            None => Violation::new(field, msg),
        }
    })
}

impl crate::PodNetwork {
    /// Every per-object rule of this network.
    pub fn validate(&self) -> Violations {
        self.spec.validate()
    }

    /// `Ok` when valid, else [`crate::Error::Invalid`] naming this network and every violation.
    pub fn check(&self) -> crate::Result<()> {
        invalid_unless_empty(
            "PodNetwork",
            kube::ResourceExt::name_any(self),
            self.validate(),
        )
    }
}

impl crate::ServiceRoute {
    /// Every per-object rule of this route, for a cluster whose DNS domain is `cluster_domain`.
    pub fn validate(&self, cluster_domain: &str) -> Violations {
        let name = self.metadata.name.as_deref().unwrap_or_default();
        let namespace = self.metadata.namespace.as_deref().unwrap_or_default();
        self.spec.validate(&RouteIdentity {
            namespace,
            name,
            cluster_domain,
        })
    }

    /// `Ok` when valid, else [`crate::Error::Invalid`] naming this route and every violation.
    pub fn check(&self, cluster_domain: &str) -> crate::Result<()> {
        let name = format!(
            "{}/{}",
            self.metadata.namespace.as_deref().unwrap_or_default(),
            self.metadata.name.as_deref().unwrap_or_default()
        );
        invalid_unless_empty("ServiceRoute", name, self.validate(cluster_domain))
    }
}

fn invalid_unless_empty(
    kind: &'static str,
    name: String,
    violations: Violations,
) -> crate::Result<()> {
    if violations.is_empty() {
        Ok(())
    } else {
        Err(crate::Error::Invalid {
            kind,
            name,
            violations,
        })
    }
}
