//! Address and CIDR syntax as the API accepts it: what Go's `netip` parsers accept, minus
//! IPv4-mapped IPv6 forms, plus "a CIDR is a network address".

use std::net::IpAddr;

use ipnet::IpNet;

/// Parses an IP address; IPv4-mapped IPv6 (`::ffff:198.18.0.1`) and zoned addresses are
/// refused, like Kubernetes' CEL `ip()`. The error says what is wrong with `value`.
pub fn parse_ip(value: &str) -> Result<IpAddr, String> {
    let ip: IpAddr = value
        .parse()
        .map_err(|_| format!("{value:?} is not an IP address"))?;
    if let IpAddr::V6(v6) = ip
        && v6.to_ipv4_mapped().is_some()
    {
        return Err(format!(
            "{value:?} is an IPv4-mapped IPv6 address; write the IPv4 address instead"
        ));
    }
    Ok(ip)
}

/// Parses a CIDR that must be a network address (no host bits set).
pub fn parse_cidr(value: &str) -> Result<IpNet, String> {
    let Some((addr, _)) = value.split_once('/') else {
        return Err(format!(
            "{value:?} is not a CIDR (expected an address and a prefix length, e.g. 198.18.0.0/16)"
        ));
    };
    parse_ip(addr)
        .map_err(|_| format!("{value:?} is not a CIDR: {addr:?} is not an IP address"))?;
    let net: IpNet = value
        .parse()
        .map_err(|_| format!("{value:?} is not a CIDR: the prefix length is invalid"))?;
    if net.trunc() != net {
        return Err(format!(
            "{value:?} has host bits set; the network address is {}",
            net.trunc()
        ));
    }
    Ok(net)
}

/// Whether two networks share any address.
pub(crate) fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(b) || b.contains(a)
}

/// `4` or `6`.
pub(crate) fn family(net: &IpNet) -> u8 {
    match net {
        IpNet::V4(_) => 4,
        IpNet::V6(_) => 6,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs() {
        assert!(parse_cidr("198.18.0.0/16").is_ok());
        assert!(parse_cidr("fd00:10::/56").is_ok());
        let err = parse_cidr("198.18.1.0/16").err().unwrap_or_default();
        assert!(
            err.contains("host bits") && err.contains("198.18.0.0/16"),
            "{err}"
        );
        assert!(parse_cidr("198.18.0.0").is_err());
        assert!(parse_cidr("198.18.0.0/33").is_err());
        assert!(parse_cidr("198.18.0.0/-1").is_err());
        assert!(parse_cidr("198.018.0.0/16").is_err());
        assert!(parse_cidr("::ffff:198.18.0.0/112").is_err());
        assert!(parse_cidr("banana/8").is_err());
    }

    #[test]
    fn ips() {
        assert!(parse_ip("198.19.0.10").is_ok());
        assert!(parse_ip("fd00::a").is_ok());
        assert!(parse_ip("::ffff:198.19.0.10").is_err());
        assert!(parse_ip("198.19.0.300").is_err());
        assert!(parse_ip("fe80::1%eth0").is_err());
    }
}
