//! The ACME state on disk, one directory per ACME directory URL under `<data_dir>/acme/` (a Pebble or staging
//! account and certificate never mix with production's): `account.json` (the account key and URL), `cert.pem`
//! (the chain), `key.pem` and `names.json` (what the certificate was ordered for). Files are 0600 and directories
//! 0700: the account key can order certificates for the names and the certificate key can impersonate them. Files
//! are written to a temporary name and renamed, so a crash never leaves half a key.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use crate::plan::Held;

/// A certificate chain and its key, PEM.
#[derive(Clone)]
pub struct Issued {
    pub chain_pem: String,
    pub key_pem: String,
    pub names: Vec<String>,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("names", &self.names)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// The directory for `directory_url` under `data_dir` (not created until something is saved).
    pub fn new(data_dir: &Path, directory_url: &str) -> Self {
        let slug: String = directory_url
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .take(100)
            .collect();
        Self {
            dir: data_dir.join("acme").join(slug),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The stored account (JSON of `instant_acme::AccountCredentials`), if any.
    pub fn account(&self) -> std::io::Result<Option<String>> {
        read_optional(&self.dir.join("account.json"))
    }

    pub fn save_account(&self, json: &str) -> std::io::Result<()> {
        self.write("account.json", json.as_bytes())
    }

    /// The stored certificate, if all of its files are there.
    pub fn issued(&self) -> std::io::Result<Option<Issued>> {
        let (Some(chain_pem), Some(key_pem), Some(names)) = (
            read_optional(&self.dir.join("cert.pem"))?,
            read_optional(&self.dir.join("key.pem"))?,
            read_optional(&self.dir.join("names.json"))?,
        ) else {
            return Ok(None);
        };
        let names = serde_json::from_str(&names).map_err(std::io::Error::other)?;
        Ok(Some(Issued {
            chain_pem,
            key_pem,
            names,
        }))
    }

    /// Key first: a crash between the files leaves a new key beside the old chain, which the loader refuses as not
    /// a pair (and orders again) rather than serving.
    pub fn save_issued(&self, issued: &Issued) -> std::io::Result<()> {
        self.write("key.pem", issued.key_pem.as_bytes())?;
        self.write("cert.pem", issued.chain_pem.as_bytes())?;
        let names = serde_json::to_string(&issued.names).map_err(std::io::Error::other)?;
        self.write("names.json", names.as_bytes())
    }

    fn write(&self, name: &str, bytes: &[u8]) -> std::io::Result<()> {
        fs::DirBuilder::new().recursive(true).mode(0o700).create(&self.dir)?;
        fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o700))?;
        let tmp = self.dir.join(format!(".{name}.tmp"));
        let _ = fs::remove_file(&tmp);
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, self.dir.join(name))
    }
}

impl Issued {
    /// Names and validity of the leaf, or `None` if the chain cannot be read.
    pub fn held(&self) -> Option<Held> {
        let leaf = leaf(&self.chain_pem)?;
        Some(Held {
            names: self.names.clone(),
            validity: server::tls::validity(&leaf)?,
        })
    }
}

/// The first certificate of a PEM chain.
fn leaf(pem: &str) -> Option<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem.as_bytes()).next()?.ok()
}

fn read_optional(path: &Path) -> std::io::Result<Option<String>> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_private_and_read_back() {
        let data = std::env::temp_dir().join(format!("traverse-acme-store-{}", std::process::id()));
        let store = Store::new(&data, "https://127.0.0.1:14000/dir");
        assert!(store.dir().ends_with("acme/127.0.0.1_14000_dir"));
        assert_eq!(store.issued().unwrap().map(|i| i.names), None);
        let generated = rcgen::generate_simple_self_signed(vec!["a.example".to_owned()]).unwrap();
        let issued = Issued {
            chain_pem: generated.cert.pem(),
            key_pem: generated.signing_key.serialize_pem(),
            names: vec!["a.example".to_owned()],
        };
        store.save_issued(&issued).unwrap();
        store.save_account("{}").unwrap();
        for name in ["account.json", "cert.pem", "key.pem", "names.json"] {
            let mode = fs::metadata(store.dir().join(name)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{name}");
        }
        assert_eq!(fs::metadata(store.dir()).unwrap().permissions().mode() & 0o777, 0o700);
        let back = store.issued().unwrap().unwrap();
        let held = back.held().unwrap();
        assert_eq!(held.names, vec!["a.example".to_owned()]);
        assert!(held.validity.not_after > held.validity.not_before);
        fs::remove_dir_all(&data).unwrap();
    }
}
