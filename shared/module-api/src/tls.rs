//! Outbound HTTPS. Every HTTP client of the system (the payment provider's, the JWK set
//! URL's, the trace exporter's, and those of the tests and tools) is built here: rustls on
//! the *ring* provider, handed to each client explicitly (no process-wide provider, and no
//! aws-lc-rs build), checking servers against the system's root certificates plus, when a
//! setting names one, a CA file of our own (a private CA). Nothing here skips the check of
//! a server's certificate or of the name it is reached by.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// The TLS configuration of a client: servers are trusted when the system's roots, or the
/// CA certificates (PEM) of `ca_file`, vouch for them and their certificate names the host.
/// Without a CA file the configuration is the same for every client: built once per
/// process (the platform verifier reads the system's CA bundle) and cloned.
pub fn client_config(ca_file: Option<&Path>) -> anyhow::Result<rustls::ClientConfig> {
    static SYSTEM_ONLY: std::sync::OnceLock<rustls::ClientConfig> = std::sync::OnceLock::new();
    if ca_file.is_some() {
        return build_config(ca_file);
    }
    if let Some(config) = SYSTEM_ONLY.get() {
        return Ok(config.clone());
    }
    let config = build_config(None)?;
    Ok(SYSTEM_ONLY.get_or_init(|| config).clone())
}

fn build_config(ca_file: Option<&Path>) -> anyhow::Result<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let extra = match ca_file {
        Some(file) => read_ca_file(file)?,
        None => Vec::new(),
    };
    // The platform's verifier (on Linux: the system's CA bundle and webpki's chain and name
    // checks), given to rustls as a custom verifier because it takes our extra roots.
    let verifier =
        rustls_platform_verifier::Verifier::new_with_extra_roots(extra, provider.clone()).context(
            "no CA certificate to check servers against (the system has none: install \
                 ca-certificates, or name a CA file)",
        )?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("the ring provider supports no TLS version")?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    // This build's clients speak HTTP/1.1 only.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// A client builder that speaks `http://` and `https://` (see [`client_config`]).
pub fn client_builder(ca_file: Option<&Path>) -> anyhow::Result<reqwest::ClientBuilder> {
    Ok(reqwest::Client::builder().tls_backend_preconfigured(client_config(ca_file)?))
}

/// [`client_builder`] for the blocking client (the trace exporter's). Like any blocking
/// client, build it off the async runtime's threads.
pub fn blocking_client_builder(
    ca_file: Option<&Path>,
) -> anyhow::Result<reqwest::blocking::ClientBuilder> {
    Ok(reqwest::blocking::Client::builder().tls_backend_preconfigured(client_config(ca_file)?))
}

/// The certificates of a PEM file; one at least.
fn read_ca_file(file: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let pem = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{} is not a PEM file", file.display()))?;
    anyhow::ensure!(
        !certs.is_empty(),
        "{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
        file.display()
    );
    let mut roots = rustls::RootCertStore::empty();
    for cert in &certs {
        roots.add(cert.clone()).with_context(|| {
            format!(
                "{} holds a certificate that is not a usable CA certificate",
                file.display()
            )
        })?;
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_file_that_is_missing_or_holds_no_certificate_is_refused_naming_it() {
        let dir = tempfile::tempdir().expect("dir");
        let missing = dir.path().join("missing.pem");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").expect("write");
        let broken = dir.path().join("broken.pem");
        std::fs::write(
            &broken,
            "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
        )
        .expect("write");
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(
            &garbage,
            "-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n",
        )
        .expect("write");
        for (file, says) in [
            (&missing, "cannot read"),
            (&empty, "holds no PEM certificate"),
            (&broken, "is not a PEM file"),
            (&garbage, "not a usable CA certificate"),
        ] {
            let error = format!("{:#}", client_config(Some(file)).expect_err("refused"));
            assert!(error.contains(says), "{}: {error}", file.display());
            assert!(error.contains(&file.display().to_string()), "{error}");
        }
    }

    #[test]
    fn a_client_builds_without_a_ca_file_on_the_system_s_roots() {
        client_builder(None)
            .expect("a builder")
            .build()
            .expect("a client");
    }
}
