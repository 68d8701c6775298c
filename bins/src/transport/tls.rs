//! TLS for IPFIX sessions: mutual authentication against one CA, as Antrea's Flow Aggregator
//! does it, on rustls with the ring provider (no aws-lc build) and TLS 1.2 as the minimum.
//!
//! - The collecting side requires a client certificate and verifies it against the CA
//!   ([`server_config`]); the exporting side verifies the server's certificate against the CA and
//!   the collector's name ([`client_config`]) and presents its own.
//! - [`generate_ca_and_certs`] writes a CA and a server and client certificate signed by it (for
//!   a first start, or tests); [`ensure_certs`] renews what is missing or near expiry, keeping a
//!   still-valid CA so deployed client certificates stay good.
//! - [`watch_files`] rebuilds a configuration when its files change, so a renewed Secret is used
//!   for the next session without a restart.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The crypto provider flowlens uses everywhere: ring.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// TLS 1.3 preferred, TLS 1.2 the minimum (DESIGN.md).
const VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// The three files a side needs: the CA that authenticates the peer, and its own chain and key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsFiles {
    pub fn paths(&self) -> Vec<PathBuf> {
        vec![self.ca.clone(), self.cert.clone(), self.key.clone()]
    }
}

/// Reads every certificate of a PEM file (a chain, or a CA bundle).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let pem = fs::read(path).with_context(|| format!("reading certificates {}", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            anyhow!(
                "{}: not a PEM certificate file ({e}); expected one or more -----BEGIN CERTIFICATE----- blocks",
                path.display()
            )
        })?;
    if certs.is_empty() {
        bail!(
            "{}: no certificate found; expected one or more -----BEGIN CERTIFICATE----- blocks",
            path.display()
        );
    }
    Ok(certs)
}

/// Reads the first private key (PKCS#8, PKCS#1 or SEC1) of a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    let pem = fs::read(path).with_context(|| format!("reading private key {}", path.display()))?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        anyhow!(
            "{}: no usable private key ({e}); expected a PEM block such as -----BEGIN PRIVATE KEY-----",
            path.display()
        )
    })
}

fn load_roots(path: &Path) -> Result<Arc<RootCertStore>> {
    let mut roots = RootCertStore::empty();
    for c in load_certs(path)? {
        roots
            .add(c)
            .with_context(|| format!("{}: CA certificate rejected", path.display()))?;
    }
    Ok(Arc::new(roots))
}

/// The collecting side: presents `cert`/`key`, requires a client certificate issued by `ca`.
pub fn server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>> {
    let provider = provider();
    let roots = load_roots(&files.ca)?;
    let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .with_context(|| format!("client verifier from CA {}", files.ca.display()))?;
    let cfg = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(VERSIONS)
        .context("TLS versions")?
        .with_client_cert_verifier(verifier)
        .with_single_cert(load_certs(&files.cert)?, load_key(&files.key)?)
        .with_context(|| {
            format!(
                "server certificate {} with key {}",
                files.cert.display(),
                files.key.display()
            )
        })?;
    Ok(Arc::new(cfg))
}

/// The exporting side: verifies the collector against `ca` (and the name it is reached by, see
/// [`server_name`]), presents `cert`/`key`.
pub fn client_config(files: &TlsFiles) -> Result<Arc<ClientConfig>> {
    let cfg = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .context("TLS versions")?
        .with_root_certificates(load_roots(&files.ca)?)
        .with_client_auth_cert(load_certs(&files.cert)?, load_key(&files.key)?)
        .with_context(|| {
            format!(
                "client certificate {} with key {}",
                files.cert.display(),
                files.key.display()
            )
        })?;
    Ok(Arc::new(cfg))
}

/// The name the server certificate must carry: a DNS name or an IP address.
pub fn server_name(host: &str) -> Result<ServerName<'static>> {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(h.to_owned()).map_err(|_| {
        anyhow!(
            "{host:?} cannot be checked against a certificate; expected a DNS name or an IP address"
        )
    })
}

/// Where [`generate_ca_and_certs`] put its files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GeneratedCerts {
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl GeneratedCerts {
    pub fn in_dir(dir: &Path) -> GeneratedCerts {
        GeneratedCerts {
            ca_cert: dir.join("ca.crt"),
            ca_key: dir.join("ca.key"),
            server_cert: dir.join("server.crt"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.crt"),
            client_key: dir.join("client.key"),
        }
    }
    pub fn server(&self) -> TlsFiles {
        TlsFiles {
            ca: self.ca_cert.clone(),
            cert: self.server_cert.clone(),
            key: self.server_key.clone(),
        }
    }
    pub fn client(&self) -> TlsFiles {
        TlsFiles {
            ca: self.ca_cert.clone(),
            cert: self.client_cert.clone(),
            key: self.client_key.clone(),
        }
    }
}

/// Validity of generated certificates.
#[derive(Clone, Copy, Debug)]
pub struct CertValidity {
    pub not_before: SystemTime,
    pub ca: Duration,
    pub leaf: Duration,
}

impl Default for CertValidity {
    /// CA for 10 years, server and client certificates for one; backdated an hour so a Node
    /// whose clock lags a little accepts them.
    fn default() -> Self {
        CertValidity {
            not_before: SystemTime::now() - Duration::from_secs(3600),
            ca: Duration::from_secs(10 * 365 * 86400),
            leaf: Duration::from_secs(365 * 86400),
        }
    }
}

const CA_NAME: &str = "flowlens CA";

/// Parameters shared by every generated certificate. Times go through the Unix epoch so the
/// `time` crate rcgen uses never has to be named here.
fn params(names: Vec<String>, from: SystemTime, validity: Duration) -> Result<CertificateParams> {
    let mut p = CertificateParams::new(names.clone()).with_context(|| {
        format!("certificate names {names:?}: expected DNS names or IP addresses")
    })?;
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    let since = from.duration_since(UNIX_EPOCH).unwrap_or_default();
    p.not_before = epoch + since;
    p.not_after = epoch + since + validity;
    Ok(p)
}

/// The CA's parameters. The subject is derived from the CA key: distinct per CA, so a peer
/// with a certificate from another flowlens install is told "unknown CA" (not a confusing
/// signature error from a name clash), and a CA read back from its key alone ([`ensure_certs`])
/// issues certificates whose issuer matches the CA certificate on disk.
fn ca_params(validity: &CertValidity, key: &KeyPair) -> Result<CertificateParams> {
    use rcgen::PublicKeyData;
    let mut p = params(Vec::new(), validity.not_before, validity.ca)?;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    // FNV-1a of the public key: a name tag, not a security property.
    let tag = key
        .subject_public_key_info()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
            (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
        });
    p.distinguished_name
        .push(DnType::CommonName, format!("{CA_NAME} {tag:016x}"));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(p)
}

fn issue_leaf(
    issuer: &Issuer<'_, KeyPair>,
    names: &[String],
    common_name: &str,
    usage: ExtendedKeyUsagePurpose,
    validity: &CertValidity,
) -> Result<(String, String)> {
    let key = KeyPair::generate().context("generating a key pair")?;
    let mut p = params(names.to_vec(), validity.not_before, validity.leaf)?;
    p.distinguished_name.push(DnType::CommonName, common_name);
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![usage];
    p.use_authority_key_identifier_extension = true;
    let cert = p
        .signed_by(&key, issuer)
        .with_context(|| format!("signing the {common_name} certificate"))?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Writes `contents` to `path` through a temporary file and a rename, so a reader (or the file
/// watcher) never sees half a file; keys get mode 0600.
fn write_file(path: &Path, contents: &str, private: bool) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(if private { 0o600 } else { 0o644 });
    }
    let mut f = opts
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(contents.as_bytes())
        .and_then(|_| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}

/// Generates a CA and a server and client certificate signed by it into `dir` (created if
/// needed): `ca.crt ca.key server.crt server.key client.crt client.key`, keys mode 0600.
/// `server_names` are the DNS names and IP addresses exporters reach the collector by (Antrea's
/// `flowAggregatorAddress`); at least one is required.
pub fn generate_ca_and_certs(dir: &Path, server_names: &[String]) -> Result<GeneratedCerts> {
    generate_ca_and_certs_with(dir, server_names, &CertValidity::default())
}

/// [`generate_ca_and_certs`] with chosen validity periods.
pub fn generate_ca_and_certs_with(
    dir: &Path,
    server_names: &[String],
    validity: &CertValidity,
) -> Result<GeneratedCerts> {
    if server_names.is_empty() {
        bail!(
            "no server name to put in the certificate; expected the DNS names or IP addresses exporters connect to"
        );
    }
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let out = GeneratedCerts::in_dir(dir);
    let ca_key = KeyPair::generate().context("generating the CA key")?;
    let ca_key_pem = ca_key.serialize_pem();
    let ca = CertifiedIssuer::self_signed(ca_params(validity, &ca_key)?, ca_key)
        .context("self-signing the CA certificate")?;
    write_file(&out.ca_cert, &ca.pem(), false)?;
    write_file(&out.ca_key, &ca_key_pem, true)?;
    let ca_key = KeyPair::from_pem(&ca_key_pem)?;
    let issuer = Issuer::new(ca_params(validity, &ca_key)?, ca_key);
    write_leaves(&out, &issuer, server_names, validity, true, true)?;
    Ok(out)
}

fn write_leaves(
    out: &GeneratedCerts,
    issuer: &Issuer<'_, KeyPair>,
    server_names: &[String],
    validity: &CertValidity,
    server: bool,
    client: bool,
) -> Result<()> {
    if server {
        let (cert, key) = issue_leaf(
            issuer,
            server_names,
            "flowlens collector",
            ExtendedKeyUsagePurpose::ServerAuth,
            validity,
        )?;
        write_file(&out.server_key, &key, true)?;
        write_file(&out.server_cert, &cert, false)?;
    }
    if client {
        let (cert, key) = issue_leaf(
            issuer,
            &[],
            "flowlens exporter",
            ExtendedKeyUsagePurpose::ClientAuth,
            validity,
        )?;
        write_file(&out.client_key, &key, true)?;
        write_file(&out.client_cert, &cert, false)?;
    }
    Ok(())
}

/// What [`ensure_certs`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Renewal {
    /// Everything present and valid for longer than the margin.
    Kept,
    /// A new CA and new certificates (the CA was missing or close to expiry): every exporter
    /// needs the new CA and client certificate.
    NewCa,
    /// New server and/or client certificates from the existing CA.
    Reissued { server: bool, client: bool },
}

/// Makes `dir` hold a usable CA, server and client certificate: generates what is missing and
/// renews what expires within `margin` of `now`. A valid CA is kept (deployed client
/// certificates stay good); a CA near expiry is replaced with everything it signed.
pub fn ensure_certs(
    dir: &Path,
    server_names: &[String],
    now: SystemTime,
    margin: Duration,
    validity: &CertValidity,
) -> Result<Renewal> {
    let out = GeneratedCerts::in_dir(dir);
    let stale = |path: &Path| -> Result<bool> {
        if !path.exists() {
            return Ok(true);
        }
        let certs = load_certs(path)?;
        needs_rotation(&certs[0], now, margin)
    };
    if !out.ca_key.exists() || stale(&out.ca_cert)? {
        generate_ca_and_certs_with(dir, server_names, validity)?;
        return Ok(Renewal::NewCa);
    }
    let server = !out.server_key.exists() || stale(&out.server_cert)?;
    let client = !out.client_key.exists() || stale(&out.client_cert)?;
    if !server && !client {
        return Ok(Renewal::Kept);
    }
    let ca_key_pem = fs::read_to_string(&out.ca_key)
        .with_context(|| format!("reading CA key {}", out.ca_key.display()))?;
    let ca_key = KeyPair::from_pem(&ca_key_pem)
        .with_context(|| format!("{}: not a PEM private key", out.ca_key.display()))?;
    let issuer = Issuer::new(ca_params(validity, &ca_key)?, ca_key);
    write_leaves(&out, &issuer, server_names, validity, server, client)?;
    Ok(Renewal::Reissued { server, client })
}

/// Whether `cert` expires within `margin` of `now` (or already has, or cannot be read).
pub fn needs_rotation(
    cert: &CertificateDer<'_>,
    now: SystemTime,
    margin: Duration,
) -> Result<bool> {
    let not_after = cert_not_after(cert)?;
    Ok(now + margin >= not_after)
}

/// The end of a certificate's validity (X.509 `notAfter`), read straight from the DER: only
/// the few fields before it are walked, which spares a full X.509 parser.
pub fn cert_not_after(cert: &CertificateDer<'_>) -> Result<SystemTime> {
    der::not_after(cert.as_ref())
        .ok_or_else(|| anyhow!("certificate is not DER X.509 with a readable notAfter time"))
}

/// Just enough DER (X.609) to reach `Certificate.tbsCertificate.validity.notAfter`.
mod der {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    /// One TLV with a single-byte tag: (tag, contents, rest).
    fn tlv(buf: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let (&tag, rest) = buf.split_first()?;
        let (&first, mut rest) = rest.split_first()?;
        let len = if first < 0x80 {
            first as usize
        } else {
            let n = (first & 0x7f) as usize;
            if n == 0 || n > 4 || rest.len() < n {
                return None;
            }
            let len = rest[..n].iter().fold(0usize, |a, &b| (a << 8) | b as usize);
            rest = &rest[n..];
            len
        };
        if rest.len() < len {
            return None;
        }
        Some((tag, &rest[..len], &rest[len..]))
    }

    pub fn not_after(cert: &[u8]) -> Option<SystemTime> {
        let (0x30, cert, _) = tlv(cert)? else {
            return None;
        };
        let (0x30, tbs, _) = tlv(cert)? else {
            return None;
        };
        let mut rest = tbs;
        let (tag, _, r) = tlv(rest)?;
        // [0] EXPLICIT version, present in every v3 certificate.
        if tag == 0xa0 {
            rest = r;
        }
        for _ in 0..3 {
            // serialNumber, signature, issuer
            rest = tlv(rest)?.2;
        }
        let (0x30, validity, _) = tlv(rest)? else {
            return None;
        };
        let (_, _, after_nb) = tlv(validity)?;
        let (tag, time, _) = tlv(after_nb)?;
        parse_time(tag, std::str::from_utf8(time).ok()?)
    }

    /// UTCTime `YYMMDDHHMMSSZ` (tag 23) or GeneralizedTime `YYYYMMDDHHMMSSZ` (tag 24), the
    /// only forms RFC 5280 allows.
    fn parse_time(tag: u8, s: &str) -> Option<SystemTime> {
        let s = s.strip_suffix('Z')?;
        if !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
        let (year, rest) = match (tag, s.len()) {
            (23, 12) => {
                let yy = num(0..2)?;
                (if yy >= 50 { 1900 + yy } else { 2000 + yy }, 2)
            }
            (24, 14) => (num(0..4)?, 4),
            _ => return None,
        };
        let f = |i: usize| num(rest + 2 * i..rest + 2 * i + 2);
        let (mo, d, h, mi, sec) = (f(0)?, f(1)?, f(2)?, f(3)?, f(4)?);
        if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
            return None;
        }
        let days = days_from_civil(year, mo, d);
        let secs = days * 86400 + h * 3600 + mi * 60 + sec;
        Some(if secs >= 0 {
            UNIX_EPOCH + Duration::from_secs(secs as u64)
        } else {
            UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
        })
    }

    /// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
    fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
        let y = if m <= 2 { y - 1 } else { y };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        era * 146_097 + doe - 719_468
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn times() {
            let t = |tag, s: &str| {
                parse_time(tag, s).map(|t| t.duration_since(UNIX_EPOCH).unwrap().as_secs())
            };
            assert_eq!(t(23, "700101000000Z"), Some(0));
            assert_eq!(t(23, "000301000000Z"), Some(951_868_800));
            assert_eq!(t(24, "20380119031408Z"), Some(2_147_483_648));
            assert_eq!(t(23, "491231235959Z"), Some(2_524_607_999));
            assert_eq!(t(23, "7001010000Z"), None);
            assert_eq!(t(24, "2038011903140Z"), None);
            assert_eq!(t(23, "70010100000+Z"), None);
        }

        #[test]
        fn garbage_is_none() {
            for b in [
                &[][..],
                &[0x30],
                &[0x30, 0x84, 0xff, 0xff, 0xff, 0xff],
                &[0x30, 0x80],
            ] {
                assert_eq!(not_after(b), None);
            }
        }
    }
}

/// A configuration rebuilt from files whenever they change.
///
/// Why polling and not inotify: Kubernetes updates a mounted Secret by swapping a `..data`
/// symlink, which file-level inotify watches miss (they follow the old inode) and which the
/// kubelet itself only does once a minute or so; a cheap `stat` of three files every few
/// seconds sees every kind of update (symlink swap, rename, in-place write), needs no extra
/// dependency, and works on any filesystem. A change is only taken once the files parse, so a
/// half-written update is retried at the next tick while the last good configuration stays in
/// use.
pub fn watch_files<T, F>(
    paths: Vec<PathBuf>,
    interval: Duration,
    shutdown: CancellationToken,
    build: F,
) -> Result<watch::Receiver<T>>
where
    T: Send + Sync + 'static,
    F: Fn() -> Result<T> + Send + 'static,
{
    let mut seen = fingerprint(&paths);
    let (tx, rx) = watch::channel(build()?);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tx.closed() => return,
                _ = tick.tick() => {}
            }
            let now = fingerprint(&paths);
            if now == seen {
                continue;
            }
            match build() {
                Ok(v) => {
                    tracing::info!(files = ?paths, "TLS files changed; new sessions use them");
                    seen = now;
                    tx.send_replace(v);
                }
                Err(e) => {
                    tracing::warn!(files = ?paths, error = format!("{e:#}"), "TLS files changed but cannot be used yet; keeping the previous ones");
                }
            }
        }
    });
    Ok(rx)
}

/// What identifies a version of the files: the resolved target (a Secret's symlink swap), the
/// inode (a rename over the file), the modification time and the length (an in-place write).
type Fingerprint = Vec<Option<(PathBuf, u64, SystemTime, u64)>>;

fn fingerprint(paths: &[PathBuf]) -> Fingerprint {
    paths
        .iter()
        .map(|p| {
            let target = fs::canonicalize(p).ok()?;
            let m = fs::metadata(&target).ok()?;
            #[cfg(unix)]
            let ino = std::os::unix::fs::MetadataExt::ino(&m);
            #[cfg(not(unix))]
            let ino = 0;
            Some((target, ino, m.modified().ok()?, m.len()))
        })
        .collect()
}

/// A client configuration from `files`, rebuilt when they change (see [`watch_files`]).
pub fn watch_client_config(
    files: TlsFiles,
    interval: Duration,
    shutdown: CancellationToken,
) -> Result<watch::Receiver<Arc<ClientConfig>>> {
    watch_files(files.paths(), interval, shutdown, move || {
        client_config(&files)
    })
}

/// A server configuration from `files`, rebuilt when they change (see [`watch_files`]).
pub fn watch_server_config(
    files: TlsFiles,
    interval: Duration,
    shutdown: CancellationToken,
) -> Result<watch::Receiver<Arc<ServerConfig>>> {
    watch_files(files.paths(), interval, shutdown, move || {
        server_config(&files)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::client::danger::ServerCertVerifier;

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("flowlens-tls-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn generated_files_load_and_keys_are_private() {
        let d = tmpdir("gen");
        let g = generate_ca_and_certs(&d, &["localhost".into(), "127.0.0.1".into()]).unwrap();
        server_config(&g.server()).unwrap();
        client_config(&g.client()).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for k in [&g.ca_key, &g.server_key, &g.client_key] {
                assert_eq!(fs::metadata(k).unwrap().permissions().mode() & 0o777, 0o600);
            }
        }
        let cert = &load_certs(&g.server_cert).unwrap()[0];
        let now = SystemTime::now();
        let after = cert_not_after(cert).unwrap();
        let left = after.duration_since(now).unwrap();
        assert!(left > Duration::from_secs(364 * 86400) && left < Duration::from_secs(366 * 86400));
        assert!(!needs_rotation(cert, now, Duration::from_secs(30 * 86400)).unwrap());
        assert!(needs_rotation(cert, now, Duration::from_secs(400 * 86400)).unwrap());
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn ensure_certs_renews_leaves_and_keeps_the_ca() {
        let d = tmpdir("ensure");
        let names = ["localhost".to_string()];
        let now = SystemTime::now();
        let month = Duration::from_secs(30 * 86400);
        let short = CertValidity {
            leaf: Duration::from_secs(7 * 86400),
            ..CertValidity::default()
        };
        assert_eq!(
            ensure_certs(&d, &names, now, month, &short).unwrap(),
            Renewal::NewCa
        );
        let ca_before = fs::read(d.join("ca.crt")).unwrap();
        // Leaves valid for a week are inside the 30-day margin: reissued from the same CA.
        assert_eq!(
            ensure_certs(&d, &names, now, month, &CertValidity::default()).unwrap(),
            Renewal::Reissued {
                server: true,
                client: true
            }
        );
        assert_eq!(fs::read(d.join("ca.crt")).unwrap(), ca_before);
        assert_eq!(
            ensure_certs(&d, &names, now, month, &CertValidity::default()).unwrap(),
            Renewal::Kept
        );
        // The reissued certificates chain to the kept CA.
        let g = GeneratedCerts::in_dir(&d);
        let roots = load_roots(&g.ca_cert).unwrap();
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider())
                .build()
                .unwrap();
        let chain = load_certs(&g.server_cert).unwrap();
        verifier
            .verify_server_cert(
                &chain[0],
                &[],
                &server_name("localhost").unwrap(),
                &[],
                rustls::pki_types::UnixTime::now(),
            )
            .unwrap();
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn bad_files_name_the_file_and_the_form() {
        let d = tmpdir("bad");
        fs::create_dir_all(&d).unwrap();
        let p = d.join("junk.crt");
        fs::write(&p, "hello").unwrap();
        let e = format!("{:#}", load_certs(&p).unwrap_err());
        assert!(
            e.contains("junk.crt") && e.contains("BEGIN CERTIFICATE"),
            "{e}"
        );
        let e = format!("{:#}", load_key(&p).unwrap_err());
        assert!(e.contains("junk.crt") && e.contains("PRIVATE KEY"), "{e}");
        let e = format!("{:#}", load_certs(&d.join("missing.crt")).unwrap_err());
        assert!(e.contains("missing.crt"), "{e}");
        let _ = fs::remove_dir_all(&d);
    }
}
