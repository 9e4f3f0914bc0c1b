//! The serving certificate, in one of two modes.
//!
//! - **Mounted** (`--cert-dir`): `tls.crt` and `tls.key` come from a Secret (cert-manager, or
//!   anyone); the files are read every `--cert-reload-interval` and the TLS configuration is
//!   swapped when their contents change. A pair that fails to load (a half-written update)
//!   leaves the previous certificate serving and is tried again at the next look.
//! - **Self-managed**: the webhook mints its own CA and a serving certificate signed by it
//!   (ECDSA P-256: rcgen's ring backend cannot generate RSA), publishes the CA as the
//!   `caBundle` of its ValidatingWebhookConfiguration, and rotates both at two thirds of their
//!   life. A rotation first publishes a bundle holding the new and the old CA, waits until it
//!   is written and a little longer for API servers to pick it up, and only then serves the
//!   new certificate: at every moment the served certificate is trusted.
//!
//! Everything is kept in memory: a restarted webhook mints afresh and rewrites the bundle.
//! One replica per self-managed configuration; several replicas would each publish their own
//! CA, so use mounted certificates for high availability.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use axum_server::tls_rustls::RustlsConfig;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::error::{Error, Result};
use crate::metrics::Metrics;

/// File names inside `--cert-dir`, as a `kubernetes.io/tls` Secret mounts them.
pub const CERT_FILE: &str = "tls.crt";
/// The key's file name.
pub const KEY_FILE: &str = "tls.key";

/// Certificates are valid from a little before they are minted: the API server's clock may
/// run behind ours.
const BACKDATE: Duration = Duration::from_secs(300);

/// What the serving certificate names.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Subject {
    /// DNS names, e.g. `switchyard-webhook.switchyard-system.svc`.
    pub dns_names: Vec<String>,
    /// IP addresses (a `url:` client config names an address).
    pub ips: Vec<IpAddr>,
}

/// A CA and a serving certificate it signed, PEM.
#[derive(Clone)]
pub struct Minted {
    /// The CA certificate: what goes into `caBundle`.
    pub ca_pem: String,
    /// The serving certificate.
    pub cert_pem: String,
    /// The serving certificate's PKCS#8 key.
    pub key_pem: String,
    /// When it was minted.
    pub issued: SystemTime,
    /// When both expire.
    pub not_after: SystemTime,
}

impl std::fmt::Debug for Minted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Minted")
            .field("ca_pem", &self.ca_pem)
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"[elided]")
            .field("issued", &self.issued)
            .field("not_after", &self.not_after)
            .finish()
    }
}

fn cert_err(what: &str) -> impl FnOnce(rcgen::Error) -> Error + '_ {
    move |source| Error::Cert {
        what: what.to_string(),
        source,
    }
}

fn offset(t: SystemTime) -> time::OffsetDateTime {
    time::OffsetDateTime::from(t)
}

/// Mints a fresh CA and a serving certificate for `subject`, both valid for `validity` from
/// `now` (and a few minutes before it).
pub fn mint(subject: &Subject, validity: Duration, now: SystemTime) -> Result<Minted> {
    if subject.dns_names.is_empty() && subject.ips.is_empty() {
        return Err(Error::Object {
            what: "serving certificate subject".into(),
            message: "no DNS name and no IP address; give --dns-name or --ip".into(),
        });
    }
    let not_before = now.checked_sub(BACKDATE).unwrap_or(now);
    let not_after = now.checked_add(validity).ok_or_else(|| Error::Object {
        what: "certificate validity".into(),
        message: format!("{validity:?} from now is out of range"),
    })?;

    let what = "the webhook CA";
    let ca_key = KeyPair::generate().map_err(cert_err(what))?;
    let mut ca = CertificateParams::default();
    ca.distinguished_name = rcgen::DistinguishedName::new();
    ca.distinguished_name
        .push(DnType::CommonName, "switchyard-webhook-ca");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca.not_before = offset(not_before);
    ca.not_after = offset(not_after);
    let ca_cert = ca.self_signed(&ca_key).map_err(cert_err(what))?;
    let issuer = Issuer::new(ca, ca_key);

    let what = "the webhook serving certificate";
    let mut leaf = CertificateParams::default();
    leaf.distinguished_name = rcgen::DistinguishedName::new();
    let cn = subject
        .dns_names
        .first()
        .cloned()
        .or_else(|| subject.ips.first().map(|ip| ip.to_string()))
        .unwrap_or_default();
    leaf.distinguished_name.push(DnType::CommonName, cn);
    leaf.is_ca = IsCa::ExplicitNoCa;
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.use_authority_key_identifier_extension = true;
    for name in &subject.dns_names {
        let ia5 = name.clone().try_into().map_err(|_| Error::Object {
            what: format!("--dns-name {name:?}"),
            message: "not an ASCII DNS name".into(),
        })?;
        leaf.subject_alt_names.push(SanType::DnsName(ia5));
    }
    leaf.subject_alt_names
        .extend(subject.ips.iter().copied().map(SanType::IpAddress));
    leaf.not_before = offset(not_before);
    leaf.not_after = offset(not_after);
    let key = KeyPair::generate().map_err(cert_err(what))?;
    let cert = leaf.signed_by(&key, &issuer).map_err(cert_err(what))?;
    Ok(Minted {
        ca_pem: ca_cert.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        issued: now,
        not_after,
    })
}

/// When a certificate minted at `issued` and expiring at `not_after` is replaced: at two
/// thirds of its life, leaving a third for the bundle to propagate and for retries.
pub fn rotation_time(issued: SystemTime, not_after: SystemTime) -> SystemTime {
    let life = not_after.duration_since(issued).unwrap_or_default();
    issued + life * 2 / 3
}

/// The `caBundle`: the current CA, then the previous one while certificates it signed may
/// still be served.
pub fn ca_bundle(current: &Minted, previous: Option<&Minted>) -> String {
    let mut out = current.ca_pem.clone();
    if let Some(p) = previous
        && p.ca_pem != current.ca_pem
    {
        if !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str(&p.ca_pem);
    }
    out
}

fn epoch_seconds(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A TLS configuration serving `minted`.
pub async fn tls_config(minted: &Minted) -> Result<RustlsConfig> {
    RustlsConfig::from_pem(
        minted.cert_pem.clone().into_bytes(),
        minted.key_pem.clone().into_bytes(),
    )
    .await
    .map_err(|source| Error::Tls {
        what: "self-managed".into(),
        source,
    })
}

/// How long to sleep until `t` (zero when past).
fn until(t: SystemTime) -> Duration {
    t.duration_since(SystemTime::now()).unwrap_or_default()
}

/// The self-managed mode's moving parts.
pub struct SelfManaged {
    /// What the certificates name.
    pub subject: Subject,
    /// Life of each CA and certificate.
    pub validity: Duration,
    /// Extra wait after the bundle is written, for every API server to pick it up.
    pub propagation: Duration,
    /// The served configuration, swapped at each rotation.
    pub tls: RustlsConfig,
    /// The bundle to publish.
    pub bundle: watch::Sender<String>,
    /// The bundle last written to the ValidatingWebhookConfiguration.
    pub applied: watch::Receiver<String>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
}

/// Self-managed rotation, forever: at two thirds of the current certificate's life, mint the
/// next one, publish a bundle trusting both CAs, wait until it is reported written (and
/// `propagation` more, capped to a quarter of the remaining life), then serve the new
/// certificate.
pub async fn rotate_forever(sm: SelfManaged, mut current: Minted) {
    let SelfManaged {
        subject,
        validity,
        propagation,
        tls,
        bundle,
        mut applied,
        metrics,
    } = sm;
    metrics
        .certificate_expiry
        .set(epoch_seconds(current.not_after));
    loop {
        tokio::time::sleep(until(rotation_time(current.issued, current.not_after))).await;
        let next = match mint(&subject, validity, SystemTime::now()) {
            Ok(n) => n,
            Err(e) => {
                error!(error = %e, "cannot mint the next serving certificate; retrying in a minute");
                metrics.reload(false);
                tokio::time::sleep(Duration::from_secs(60)).await;
                continue;
            }
        };
        let want = ca_bundle(&next, Some(&current));
        bundle.send_replace(want.clone());
        info!("minted the next CA and serving certificate; publishing a caBundle trusting both");
        // Until the new CA is published the old certificate keeps serving; it is valid for a
        // third of its life still.
        let remaining = until(current.not_after);
        let wait = applied.wait_for(|a| *a == want);
        if tokio::time::timeout(remaining / 2, wait).await.is_err() {
            warn!(
                "the caBundle trusting the next CA was not written in time; serving the next certificate anyway before the current one expires"
            );
        }
        tokio::time::sleep(propagation.min(until(current.not_after) / 4)).await;
        match tls
            .reload_from_pem(
                next.cert_pem.clone().into_bytes(),
                next.key_pem.clone().into_bytes(),
            )
            .await
        {
            Ok(()) => {
                metrics.reload(true);
                metrics
                    .certificate_expiry
                    .set(epoch_seconds(next.not_after));
                info!(not_after = ?next.not_after, "serving the rotated certificate");
                current = next;
            }
            Err(e) => {
                metrics.reload(false);
                error!(error = %e, "cannot load the rotated certificate; keeping the current one");
            }
        }
    }
}

/// A digest of the mounted pair, to notice any change (a Secret volume swaps a symlink, so
/// modification times are not reliable).
fn fingerprint(dir: &Path) -> Result<u64> {
    let mut h = DefaultHasher::new();
    for file in [CERT_FILE, KEY_FILE] {
        let path = dir.join(file);
        let bytes = std::fs::read(&path).map_err(|source| Error::Io {
            op: "read",
            path: path.clone(),
            source,
        })?;
        bytes.hash(&mut h);
    }
    Ok(h.finish())
}

/// Loads the mounted pair, waiting (and saying so every `interval`) while it is absent: a
/// certificate issuer may not have written the Secret yet when the pod starts.
pub async fn load_mounted(dir: &Path, interval: Duration) -> (RustlsConfig, u64) {
    loop {
        match load_once(dir).await {
            Ok(pair) => return pair,
            Err(e) => {
                warn!(error = %e, "no usable serving certificate yet; waiting");
                tokio::time::sleep(interval).await;
            }
        }
    }
}

async fn load_once(dir: &Path) -> Result<(RustlsConfig, u64)> {
    let fp = fingerprint(dir)?;
    let config = RustlsConfig::from_pem_file(dir.join(CERT_FILE), dir.join(KEY_FILE))
        .await
        .map_err(|source| Error::Tls {
            what: dir.display().to_string(),
            source,
        })?;
    Ok((config, fp))
}

/// Watches the mounted pair and reloads it whenever its contents change.
pub async fn reload_mounted_forever(
    dir: PathBuf,
    interval: Duration,
    tls: RustlsConfig,
    mut loaded: u64,
    metrics: Arc<Metrics>,
) {
    loop {
        tokio::time::sleep(interval).await;
        let fp = match fingerprint(&dir) {
            Ok(fp) => fp,
            Err(e) => {
                warn!(error = %e, "cannot read the mounted certificate; still serving the loaded one");
                continue;
            }
        };
        if fp == loaded {
            continue;
        }
        match tls
            .reload_from_pem_file(dir.join(CERT_FILE), dir.join(KEY_FILE))
            .await
        {
            Ok(()) => {
                loaded = fp;
                metrics.reload(true);
                info!(dir = %dir.display(), "reloaded the serving certificate");
            }
            Err(e) => {
                metrics.reload(false);
                warn!(dir = %dir.display(), error = %e, "the changed certificate does not load (yet); still serving the loaded one");
            }
        }
    }
}

/// Set once a certificate serves; part of readiness.
#[derive(Debug, Default)]
pub struct CertLoaded(pub AtomicBool);

impl CertLoaded {
    /// Marks a certificate as loaded.
    pub fn set(&self) {
        self.0.store(true, Ordering::Release);
    }

    /// Whether a certificate is loaded.
    pub fn get(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// Parses a duration such as `90d`, `12h`, `30m`, `45s` or a plain number of seconds.
pub fn parse_duration(value: &str) -> std::result::Result<Duration, String> {
    let v = value.trim();
    let (digits, unit) = match v.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => v.split_at(i),
        None => (v, "s"),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{value:?} is not a duration such as 90d, 12h, 30m or 45s"))?;
    let secs = match unit {
        "s" => Some(n),
        "m" => n.checked_mul(60),
        "h" => n.checked_mul(3600),
        "d" => n.checked_mul(86_400),
        _ => None,
    }
    .ok_or_else(|| format!("{value:?} is not a duration such as 90d, 12h, 30m or 45s"))?;
    if secs == 0 {
        return Err(format!("{value:?} is zero; a duration must be positive"));
    }
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subject() -> Subject {
        Subject {
            dns_names: vec!["switchyard-webhook.switchyard-system.svc".into()],
            ips: vec!["127.0.0.1".parse().unwrap()],
        }
    }

    #[test]
    fn mints_a_ca_and_a_serving_certificate() {
        let now = SystemTime::now();
        let m = mint(&subject(), Duration::from_secs(3600), now).unwrap();
        assert!(m.ca_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(m.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(m.key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        assert_eq!(m.not_after, now + Duration::from_secs(3600));
        assert_ne!(m.ca_pem, m.cert_pem);
    }

    #[test]
    fn refuses_an_empty_subject() {
        let err = mint(
            &Subject::default(),
            Duration::from_secs(60),
            SystemTime::now(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("--dns-name"), "{err}");
    }

    #[test]
    fn rotates_at_two_thirds_of_life() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(
            rotation_time(t0, t0 + Duration::from_secs(90 * 86_400)),
            t0 + Duration::from_secs(60 * 86_400)
        );
        assert_eq!(rotation_time(t0, t0), t0);
    }

    #[test]
    fn the_bundle_trusts_the_previous_ca_during_a_rotation() {
        let a = mint(&subject(), Duration::from_secs(60), SystemTime::now()).unwrap();
        let b = mint(&subject(), Duration::from_secs(60), SystemTime::now()).unwrap();
        assert_eq!(ca_bundle(&a, None), a.ca_pem);
        let both = ca_bundle(&b, Some(&a));
        assert!(both.starts_with(&b.ca_pem) && both.contains(&a.ca_pem));
        assert_eq!(both.matches("BEGIN CERTIFICATE").count(), 2);
    }

    #[test]
    fn durations() {
        assert_eq!(
            parse_duration("90d").unwrap(),
            Duration::from_secs(90 * 86_400)
        );
        assert_eq!(parse_duration("12h").unwrap(), Duration::from_secs(43_200));
        assert_eq!(parse_duration("30m").unwrap(), Duration::from_secs(1800));
        assert_eq!(parse_duration("45").unwrap(), Duration::from_secs(45));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5y").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("99999999999999999999d").is_err());
    }

    #[tokio::test]
    async fn mounted_certificates_reload_when_they_change() {
        let _ = crate::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let a = mint(&subject(), Duration::from_secs(600), SystemTime::now()).unwrap();
        std::fs::write(dir.path().join(CERT_FILE), &a.cert_pem).unwrap();
        std::fs::write(dir.path().join(KEY_FILE), &a.key_pem).unwrap();
        let (tls, fp) = load_mounted(dir.path(), Duration::from_millis(10)).await;
        let first = tls.get_inner();
        let mut registry = prometheus_client::registry::Registry::default();
        let metrics = Arc::new(Metrics::register(&mut registry));
        let task = tokio::spawn(reload_mounted_forever(
            dir.path().to_path_buf(),
            Duration::from_millis(20),
            tls.clone(),
            fp,
            metrics,
        ));
        // A half-written pair (new certificate, old key) does not load: the old one stays.
        let b = mint(&subject(), Duration::from_secs(600), SystemTime::now()).unwrap();
        std::fs::write(dir.path().join(CERT_FILE), &b.cert_pem).unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(Arc::ptr_eq(&first, &tls.get_inner()));
        std::fs::write(dir.path().join(KEY_FILE), &b.key_pem).unwrap();
        let mut swapped = false;
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            if !Arc::ptr_eq(&first, &tls.get_inner()) {
                swapped = true;
                break;
            }
        }
        task.abort();
        assert!(swapped, "the new pair was loaded");
    }
}
