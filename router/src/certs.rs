//! The certificate for a TLS handshake: an account's own domain's (from the
//! routing table), else the listener's own (`--tls-cert`, picked by SNI).

use std::sync::Arc;

use headwater_serve::tls::Certs;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::table::Shared;

pub struct AccountCerts {
    pub table: Arc<Shared>,
    pub own: Arc<Certs>,
    /// The router's `--domain`: names under it are the platform's own.
    pub domain: Option<String>,
}

impl std::fmt::Debug for AccountCerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccountCerts").field("own", &self.own).finish_non_exhaustive()
    }
}

impl ResolvesServerCert for AccountCerts {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let sni = hello.server_name();
        let platform =
            |name: &str| self.domain.as_deref().is_some_and(|d| name == d || name.ends_with(&format!(".{d}")));
        if let Some((_, key)) =
            sni.filter(|name| !platform(name)).and_then(|name| self.table.get().domains.get(name).cloned())
        {
            return Some(key);
        }
        Some(self.own.pick(sni))
    }
}
