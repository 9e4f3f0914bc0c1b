//! Label selector syntax: keys, values and operators, as `metav1.LabelSelector` validation.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use super::{
    Violations,
    names::{is_label_key, is_label_value},
};

/// Checks every key, value and operator of `selector` at `path`.
pub(crate) fn validate_selector(path: &str, selector: &LabelSelector) -> Violations {
    let mut out = Violations::default();
    for (key, value) in selector.match_labels.iter().flatten() {
        if !is_label_key(key) {
            out.push(
                format!("{path}.matchLabels"),
                format!("{key:?} is not a valid label key (an optional DNS subdomain prefix and '/', then 1 to 63 of [A-Za-z0-9-_.] starting and ending alphanumeric)"),
            );
        }
        if !is_label_value(value) {
            out.push(
                format!("{path}.matchLabels[{key}]"),
                format!("{value:?} is not a valid label value (empty, or 1 to 63 of [A-Za-z0-9-_.] starting and ending alphanumeric)"),
            );
        }
    }
    for (i, req) in selector.match_expressions.iter().flatten().enumerate() {
        let at = format!("{path}.matchExpressions[{i}]");
        if !is_label_key(&req.key) {
            out.push(
                format!("{at}.key"),
                format!("{:?} is not a valid label key", req.key),
            );
        }
        let values = req.values.as_deref().unwrap_or_default();
        match req.operator.as_str() {
            "In" | "NotIn" => {
                if values.is_empty() {
                    out.push(
                        format!("{at}.values"),
                        format!("operator {} needs at least one value", req.operator),
                    );
                }
            }
            "Exists" | "DoesNotExist" => {
                if !values.is_empty() {
                    out.push(
                        format!("{at}.values"),
                        format!("operator {} takes no values", req.operator),
                    );
                }
            }
            other => out.push(
                format!("{at}.operator"),
                format!("{other:?} is not a selector operator (In, NotIn, Exists, DoesNotExist)"),
            ),
        }
        for (j, v) in values.iter().enumerate() {
            if !is_label_value(v) {
                out.push(
                    format!("{at}.values[{j}]"),
                    format!("{v:?} is not a valid label value"),
                );
            }
        }
    }
    out
}

/// Whether the selector selects by anything at all.
pub(crate) fn is_empty(selector: &LabelSelector) -> bool {
    selector.match_labels.as_ref().is_none_or(|m| m.is_empty())
        && selector
            .match_expressions
            .as_ref()
            .is_none_or(|e| e.is_empty())
}
