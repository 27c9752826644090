//! The command line: `roomcast [serve] [OPTIONS]` (serve is the default command),
//! `roomcast bench` and `roomcast soak`.
//!
//! Parsing problems are clap's (it prints usage and exits 2); configuration problems found
//! after layering (env, file) are printed here and also exit 2. Runtime failures exit 1.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{Config, LogFormat, ServeArgs, log_filter};

/// A horizontally scalable real-time WebSocket server with rooms and no broker.
#[derive(Debug, Parser)]
#[command(name = "roomcast", version, args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Options of `serve`, accepted without the subcommand too.
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
// Parsed once per process; boxing the serve flags would only complicate the clap derive.
#[allow(clippy::large_enum_variant)]
pub enum Command {
    /// Run a node (the default).
    Serve(ServeArgs),
    /// Load-generate against nodes (or nats-server) and check every delivery.
    Bench(crate::bench::BenchArgs),
    /// Run a churning client population against nodes for a long time; check that nothing
    /// acknowledged is lost and that nothing the nodes hold grows without bound.
    Soak(crate::soak::SoakArgs),
    /// GET an http:// or https:// URL; exit 0 on status 200, else 1 (container health checks
    /// need no curl). Over https the certificate is not checked: the probe asks whether the
    /// node answers, not who it is.
    Probe {
        /// e.g. http://127.0.0.1:8080/healthz or https://127.0.0.1:8443/healthz
        url: String,
        /// Give up after this long.
        #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
}

/// Parses the command line and runs it; returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let args = match cli.command {
        Some(Command::Serve(args)) => args,
        Some(Command::Bench(args)) => return bench(args),
        Some(Command::Soak(args)) => return soak(args),
        Some(Command::Probe { url, timeout }) => return probe(&url, timeout),
        None => cli.serve,
    };
    serve(&args)
}

fn probe(url: &str, timeout: std::time::Duration) -> ExitCode {
    match http_status(url, timeout) {
        Ok(200) => ExitCode::SUCCESS,
        Ok(status) => {
            eprintln!("roomcast probe: {url}: HTTP {status}");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("roomcast probe: {url}: {e}");
            ExitCode::from(1)
        }
    }
}

/// A minimal blocking HTTP/1.0 GET returning the status code (https: over TLS, the
/// certificate not checked).
fn http_status(url: &str, timeout: std::time::Duration) -> std::io::Result<u16> {
    use std::io::{Read, Write};
    use std::net::ToSocketAddrs;
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidInput, m.to_string());
    let (tls, rest) = match (url.strip_prefix("http://"), url.strip_prefix("https://")) {
        (Some(r), _) => (false, r),
        (_, Some(r)) => (true, r),
        _ => return Err(bad("only http:// and https:// URLs")),
    };
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr = host
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| bad("host resolves to nothing"))?;
    let s = std::net::TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let mut s: Box<dyn ReadWrite> = if tls {
        Box::new(unverified_tls(s, host)?)
    } else {
        Box::new(s)
    };
    write!(s, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n")?;
    s.flush()?;
    let mut head = [0u8; 64];
    let n = s.read(&mut head)?;
    let line = String::from_utf8_lossy(&head[..n]);
    line.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| bad("not an HTTP response"))
}

trait ReadWrite: std::io::Read + std::io::Write {}
impl<T: std::io::Read + std::io::Write> ReadWrite for T {}

/// A TLS client connection that accepts any certificate (the probe's only question is
/// whether the node answers).
fn unverified_tls(
    s: std::net::TcpStream,
    host: &str,
) -> std::io::Result<rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>> {
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use std::sync::Arc;

    #[derive(Debug)]
    struct AnyCert(Arc<rustls::crypto::CryptoProvider>);
    impl ServerCertVerifier for AnyCert {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }
        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }

    let err = |e: rustls::Error| std::io::Error::other(e.to_string());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(err)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
        .with_no_client_auth();
    let name_host = host
        .rsplit_once(':')
        .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']'))
        .unwrap_or(host);
    let name = ServerName::try_from(name_host.to_string())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
    let conn = rustls::ClientConnection::new(Arc::new(config), name).map_err(err)?;
    Ok(rustls::StreamOwned::new(conn, s))
}

/// Exit 0 when the run saw no violation, 1 when it did, 2 on a usage or setup error.
fn bench(args: crate::bench::BenchArgs) -> ExitCode {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            std::env::var("ROOMCAST_BENCH_LOG")
                .ok()
                .and_then(|spec| log_filter(&spec).ok())
                .unwrap_or_else(|| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .log_internal_errors(false)
        .with_ansi(false)
        .try_init();
    let json = args.json;
    match crate::bench::run(args) {
        Ok(report) => {
            if json {
                match serde_json::to_string(&report) {
                    Ok(s) => println!("{s}"),
                    Err(e) => eprintln!("roomcast bench: {e}"),
                }
            } else {
                println!("{report}");
            }
            if report.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("roomcast bench: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Exit 0 when the soak passed, 1 when it found a loss, a broken guarantee or growth, 2 on a
/// usage or setup error. Logs (warnings about violations as they happen) go to stderr.
fn soak(args: crate::soak::SoakArgs) -> ExitCode {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ROOMCAST_SOAK_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .log_internal_errors(false)
        .with_ansi(false)
        .try_init();
    let json = args.json;
    match crate::soak::run(args) {
        Ok(report) => {
            if json {
                match serde_json::to_string(&report) {
                    Ok(s) => println!("{s}"),
                    Err(e) => eprintln!("roomcast soak: {e}"),
                }
            } else {
                println!("{report}");
            }
            if report.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("roomcast soak: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn serve(args: &ServeArgs) -> ExitCode {
    let config = match Config::load(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("roomcast: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(&config);
    match crate::server::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "roomcast failed");
            eprintln!("roomcast: {e}");
            ExitCode::from(1)
        }
    }
}

/// Logs go to stderr, filtered by `log_level` (validated by the config).
pub fn init_logging(config: &Config) {
    let filter = log_filter(&config.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // A closed stderr must not take the node down: tracing-subscriber would report the failed
    // write with eprintln!, which panics when stderr is gone.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .log_internal_errors(false);
    let _ = match config.log_format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.with_ansi(false).try_init(),
    };
}
