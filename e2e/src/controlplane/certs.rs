//! The lab's PKI: one cluster CA, minted in-process with rcgen, signing every serving and
//! client certificate the control plane and its clients use.
//!
//! Keys are ECDSA P-256 in PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`): rcgen's ring backend
//! cannot generate RSA keys, and kube-apiserver, kube-controller-manager, client-go and
//! kube-rs all accept PKCS#8 EC keys (the service-account flags too: "RSA or ECDSA").

use std::net::IpAddr;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, DnValue, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose, SanType,
};

use crate::error::{Error, Result};

/// A certificate and its private key, both PEM.
#[derive(Clone)]
pub struct Pem {
    /// The certificate, `-----BEGIN CERTIFICATE-----`.
    pub cert: String,
    /// The PKCS#8 private key, `-----BEGIN PRIVATE KEY-----`.
    pub key: String,
}

impl std::fmt::Debug for Pem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pem")
            .field("cert", &self.cert)
            .field("key", &"[elided]")
            .finish()
    }
}

/// The cluster CA: self-signed, kept in memory so the lab can mint more certificates later.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: Pem,
    der: Vec<u8>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("cert", &self.pem.cert)
            .finish_non_exhaustive()
    }
}

fn cert_err(what: &str) -> impl FnOnce(rcgen::Error) -> Error + '_ {
    move |source| Error::Cert {
        what: what.to_string(),
        source,
    }
}

/// The organisation (O) attribute once as itself and once as a custom type with the same
/// OID: rcgen's `DistinguishedName` keeps one value per attribute type, and that trick is the
/// only way to get a second O without hand-writing DER. Go's x509 parser reads both as
/// `Subject.Organization`, which is what Kubernetes maps to groups.
const ORG_NAME_OID: [u64; 4] = [2, 5, 4, 10];

/// How many groups (O attributes) a minted client certificate can carry; see [`ORG_NAME_OID`].
pub const MAX_GROUPS: usize = 2;

impl Ca {
    /// Mints a fresh self-signed CA named `common_name`.
    pub fn new(common_name: &str) -> Result<Self> {
        let what = "the cluster CA";
        let key = KeyPair::generate().map_err(cert_err(what))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).map_err(cert_err(what))?;
        let pem = Pem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        };
        let der = cert.der().to_vec();
        Ok(Self {
            issuer: Issuer::new(params, key),
            pem,
            der,
        })
    }

    /// The CA certificate and key.
    pub fn pem(&self) -> &Pem {
        &self.pem
    }

    /// The CA certificate, DER.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// A serving certificate for `common_name`, valid for the given DNS names and IPs.
    pub fn serving(&self, common_name: &str, dns: &[&str], ips: &[IpAddr]) -> Result<Pem> {
        let what = format!("serving certificate {common_name}");
        let mut params = leaf(common_name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        for name in dns {
            let name = (*name).to_string().try_into().map_err(cert_err(&what))?;
            params.subject_alt_names.push(SanType::DnsName(name));
        }
        params
            .subject_alt_names
            .extend(ips.iter().copied().map(SanType::IpAddress));
        self.sign(&what, &params)
    }

    /// A client certificate: Kubernetes reads CN as the user and each O as a group.
    /// At most [`MAX_GROUPS`] groups.
    pub fn client(&self, user: &str, groups: &[&str]) -> Result<Pem> {
        if groups.len() > MAX_GROUPS {
            return Err(Error::Invalid {
                what: format!("groups for client certificate {user}"),
                message: format!(
                    "{} groups given, at most {MAX_GROUPS} fit (rcgen keeps one value per subject \
                     attribute type); bind RBAC to the user instead",
                    groups.len()
                ),
            });
        }
        let what = format!("client certificate {user}");
        let mut params = leaf(user);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let types = [
            DnType::OrganizationName,
            DnType::CustomDnType(ORG_NAME_OID.to_vec()),
        ];
        for (ty, group) in types.into_iter().zip(groups) {
            params
                .distinguished_name
                .push(ty, DnValue::Utf8String((*group).to_string()));
        }
        self.sign(&what, &params)
    }

    fn sign(&self, what: &str, params: &CertificateParams) -> Result<Pem> {
        let key = KeyPair::generate().map_err(cert_err(what))?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(cert_err(what))?;
        Ok(Pem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        })
    }
}

fn leaf(common_name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    params
}

/// A bare key pair (the service-account token signing key), PKCS#8 private key PEM and
/// SubjectPublicKeyInfo public key PEM.
pub fn key_pair(what: &str) -> Result<(String, String)> {
    let key = KeyPair::generate().map_err(cert_err(what))?;
    Ok((key.serialize_pem(), key.public_key_pem()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mints_pem() {
        let ca = Ca::new("test-ca").unwrap();
        assert!(ca.pem().cert.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(ca.pem().key.starts_with("-----BEGIN PRIVATE KEY-----"));
        let s = ca
            .serving(
                "kube-apiserver",
                &["kubernetes"],
                &["198.18.0.1".parse().unwrap()],
            )
            .unwrap();
        assert!(s.cert.contains("CERTIFICATE"));
        let c = ca.client("admin", &["system:masters", "other"]).unwrap();
        assert!(c.key.contains("PRIVATE KEY"));
        assert!(ca.client("x", &["a", "b", "c"]).is_err());
    }
}
