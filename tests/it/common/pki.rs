//! A throwaway PKI for TLS tests, made with the `openssl` command: CAs, and server and client
//! certificates they sign, with the subject alternative names a test asks for.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

/// A directory of certificates and keys, deleted on drop.
pub struct Pki {
    dir: tempfile::TempDir,
}

/// A certificate and its key, as PEM files.
#[derive(Clone, Debug)]
pub struct Pair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Pair {
    pub fn cert_pem(&self) -> Vec<u8> {
        std::fs::read(&self.cert).expect("cert")
    }

    pub fn key_pem(&self) -> Vec<u8> {
        std::fs::read(&self.key).expect("key")
    }
}

fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl (apt-get install openssl)");
    assert!(out.status.success(), "openssl {args:?}: {out:?}");
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

impl Pki {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A self-signed CA named `name`.
    pub fn ca(&self, name: &str) -> Pair {
        let pair = Pair {
            cert: self.path(&format!("ca-{name}.crt")),
            key: self.path(&format!("ca-{name}.key")),
        };
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-keyout",
            s(&pair.key),
            "-out",
            s(&pair.cert),
        ]);
        pair
    }

    /// A certificate signed by `ca`: `san` like `DNS:localhost,IP:127.0.0.1` or
    /// `URI:spiffe://test/backend`, `usage` `serverAuth` or `clientAuth`.
    pub fn leaf(&self, ca: &Pair, name: &str, san: &str, usage: &str) -> Pair {
        let pair = Pair {
            cert: self.path(&format!("{name}.crt")),
            key: self.path(&format!("{name}.key")),
        };
        let csr = self.path(&format!("{name}.csr"));
        let ext = self.path(&format!("{name}.ext"));
        std::fs::write(
            &ext,
            format!(
                "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n\
                 extendedKeyUsage={usage}\nsubjectAltName={san}\n"
            ),
        )
        .expect("ext file");
        openssl(&[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            &format!("/CN={name}"),
            "-keyout",
            s(&pair.key),
            "-out",
            s(&csr),
        ]);
        openssl(&[
            "x509",
            "-req",
            "-in",
            s(&csr),
            "-CA",
            s(&ca.cert),
            "-CAkey",
            s(&ca.key),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            s(&ext),
            "-out",
            s(&pair.cert),
        ]);
        pair
    }

    /// A server certificate for `localhost` / `127.0.0.1`, signed by `ca`.
    pub fn server(&self, ca: &Pair, name: &str) -> Pair {
        self.leaf(ca, name, "DNS:localhost,IP:127.0.0.1", "serverAuth")
    }
}
