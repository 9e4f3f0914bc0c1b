//! Name syntax shared by Kubernetes and DNS: labels, subdomains, IANA service names, label
//! keys and values. Same rules as `k8s.io/apimachinery/pkg/util/validation`.

fn is_alnum_lower(c: u8) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

/// RFC 1123 label: 1..63 of `[a-z0-9-]`, starting and ending alphanumeric.
pub fn is_dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter().all(|&c| is_alnum_lower(c) || c == b'-')
        && b.first().is_some_and(|&c| is_alnum_lower(c))
        && b.last().is_some_and(|&c| is_alnum_lower(c))
}

/// RFC 1035 label: an RFC 1123 label that starts with a letter (Service names).
pub fn is_dns1035_label(s: &str) -> bool {
    is_dns1123_label(s) && s.as_bytes().first().is_some_and(u8::is_ascii_lowercase)
}

/// RFC 1123 subdomain: at most 253 characters of dot-separated RFC 1123 labels.
pub fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

/// IANA service name (RFC 6335): 1..15 of `[a-z0-9-]`, at least one letter, no leading,
/// trailing or double hyphen.
pub fn is_iana_svc_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 15
        && b.iter().all(|&c| is_alnum_lower(c) || c == b'-')
        && b.iter().any(u8::is_ascii_lowercase)
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--")
}

/// A "qualified name" part: 1..63 of `[A-Za-z0-9-_.]`, starting and ending alphanumeric.
fn is_qualified_name_part(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        && b.first().is_some_and(u8::is_ascii_alphanumeric)
        && b.last().is_some_and(u8::is_ascii_alphanumeric)
}

/// Label key: an optional DNS subdomain prefix and `/`, then a qualified name.
pub fn is_label_key(s: &str) -> bool {
    match s.split_once('/') {
        Some((prefix, name)) => is_dns1123_subdomain(prefix) && is_qualified_name_part(name),
        None => is_qualified_name_part(s),
    }
}

/// Label value: empty, or a qualified name part.
pub fn is_label_value(s: &str) -> bool {
    s.is_empty() || is_qualified_name_part(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        assert!(is_dns1123_label("web-1"));
        assert!(is_dns1123_label("1web"));
        assert!(!is_dns1123_label("-web"));
        assert!(!is_dns1123_label("Web"));
        assert!(!is_dns1123_label(&"a".repeat(64)));
        assert!(is_dns1035_label("web"));
        assert!(!is_dns1035_label("1web"));
    }

    #[test]
    fn subdomains() {
        assert!(is_dns1123_subdomain("web.shop.example.internal"));
        assert!(!is_dns1123_subdomain("*.shop.example"));
        assert!(!is_dns1123_subdomain("web..shop"));
        assert!(!is_dns1123_subdomain("web.shop."));
        assert!(!is_dns1123_subdomain(&format!(
            "{}.x",
            "a".repeat(63) + &".a".repeat(100)
        )));
    }

    #[test]
    fn iana() {
        assert!(is_iana_svc_name("http"));
        assert!(is_iana_svc_name("h2c-alt"));
        assert!(!is_iana_svc_name("8080"));
        assert!(!is_iana_svc_name("a--b"));
        assert!(!is_iana_svc_name("-http"));
        assert!(!is_iana_svc_name("http-"));
        assert!(!is_iana_svc_name("Http"));
        assert!(!is_iana_svc_name("averyveryverylongname"));
    }

    #[test]
    fn label_keys_and_values() {
        assert!(is_label_key("app"));
        assert!(is_label_key("app.kubernetes.io/name"));
        assert!(!is_label_key("/name"));
        assert!(!is_label_key("a/b/c"));
        assert!(!is_label_key("-app"));
        assert!(is_label_value(""));
        assert!(is_label_value("Blue_1.x"));
        assert!(!is_label_value("blue!"));
    }
}
