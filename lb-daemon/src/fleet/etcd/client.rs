//! [`DesiredStore`] on a real etcd, through the `etcd-client` crate (gRPC). The fleet code is
//! synchronous (the engine's mutex, the API's blocking pool, the fleet thread), so every call
//! runs on the daemon's tokio runtime through [`Handle::block_on`], bounded by `dial_timeout`:
//! an unreachable etcd answers [`StoreError::Unavailable`] within about that time.
//!
//! The client connects lazily and again after a failure, so the daemon starts (and forwards)
//! without etcd. HTTP/2 keep-alive pings detect a dead connection that sends no reset, which
//! breaks the watch, and the node resyncs once etcd answers again.

use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare as EtcdCompare, CompareOp, ConnectOptions, EventType, GetOptions, Identity,
    PutOptions, SortOrder, SortTarget, TlsOptions, Txn as EtcdTxn, TxnOp, WatchOptions, WatchStream,
};
use tokio::runtime::Handle;

use super::config::FleetConfig;
use super::store::{Compare, DesiredStore, Event, Feed, Kv, Snapshot, StoreError, Txn};

/// A connection to the fleet's etcd.
pub struct EtcdStore {
    endpoints: Vec<String>,
    options: ConnectOptions,
    handle: Handle,
    timeout: Duration,
    lease_ttl: i64,
    client: Mutex<Option<Client>>,
    lease: Mutex<Option<i64>>,
}

fn map_err(e: etcd_client::Error) -> StoreError {
    use etcd_client::Error as E;
    let error = match e {
        E::GRpcStatus(s) => match s.code() {
            tonic::Code::Unavailable
            | tonic::Code::DeadlineExceeded
            | tonic::Code::Cancelled
            | tonic::Code::Unknown => StoreError::Unavailable(describe_status(&s)),
            _ => StoreError::Failed(format!("{}: {}", s.code(), s.message())),
        },
        E::TransportError(_) | E::IoError(_) | E::WatchError(_) | E::LeaseKeepAliveError(_) => {
            StoreError::Unavailable(describe(&e))
        }
        other => StoreError::Failed(describe(&other)),
    };
    with_hint(error)
}

/// An error and its causes, each said once: a TLS failure is only named deep in the chain
/// ("transport error: ... invalid peer certificate: UnknownIssuer").
fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur = Some(e);
    while let Some(err) = cur {
        let text = err.to_string();
        if !text.is_empty() && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        cur = err.source();
    }
    parts.join(": ")
}

/// A gRPC status as its message and the causes the message does not already say (its
/// `Display` is a debug dump).
fn describe_status(s: &tonic::Status) -> String {
    let mut text = s.message().to_string();
    let mut cur = std::error::Error::source(s);
    while let Some(err) = cur {
        let part = err.to_string();
        if !part.is_empty() && !text.contains(&part) {
            text = if text.is_empty() { part } else { format!("{text}: {part}") };
        }
        cur = err.source();
    }
    text
}

/// The `[fleet]` settings to check when etcd's answer names a configuration problem (TLS files,
/// credentials, permissions) rather than an outage.
pub fn config_hint(message: &str) -> Option<&'static str> {
    let m = message.to_ascii_lowercase();
    let has = |words: &[&str]| words.iter().any(|w| m.contains(w));
    if has(&["authentication failed", "invalid user id or password", "invalid auth token"]) {
        Some("etcd refused the credentials: check fleet.user and fleet.password_file")
    } else if has(&["authentication is not enabled"]) {
        Some("etcd has authentication disabled: remove fleet.user and fleet.password_file")
    } else if has(&["permission denied"]) {
        Some("the etcd user lacks permission: grant it readwrite on the prefix /lb/<cluster>/")
    } else if has(&["unknownissuer", "unknown issuer", "invalid peer certificate", "certificate verify"]) {
        Some(
            "etcd's server certificate was not accepted: check fleet.ca_file (the CA that signed it) \
             and that the certificate names the endpoint's host",
        )
    } else if has(&[
        "certificate required",
        "certificaterequired",
        "bad certificate",
        "badcertificate",
        "unknown ca",
        "unknownca",
        "handshake",
    ]) {
        Some(
            "etcd refused the TLS handshake: check fleet.cert_file and fleet.key_file (a client certificate signed by the CA etcd trusts)",
        )
    } else if has(&[
        "invalid content type",
        "corrupt message",
        "frame with invalid size",
        "invalid http version",
    ]) {
        Some("the endpoint's scheme does not match etcd's: https:// for a TLS etcd, http:// otherwise")
    } else {
        None
    }
}

/// `error` with the setting to check named, when it is a configuration problem. Those count as
/// unavailable (changes refused, exit 3 in lbctl), and the client connects and authenticates
/// again on the next call.
fn with_hint(error: StoreError) -> StoreError {
    let (StoreError::Unavailable(why) | StoreError::Failed(why)) = &error else { return error };
    match config_hint(why) {
        Some(hint) => StoreError::Unavailable(format!("{why} ({hint})")),
        None => error,
    }
}

/// What `lb-daemon --check` found reaching the fleet's etcd.
#[derive(Debug, PartialEq, Eq)]
pub enum Reach {
    /// etcd answered a read of the cluster's keys with these settings.
    Ok,
    /// etcd did not answer (down, or not reachable from here): not a config error.
    Unreachable(String),
    /// etcd answered but refused these settings (TLS files, credentials, permissions).
    Refused(String),
}

/// Reads the cluster's root key once with `cfg`'s endpoints, TLS files and credentials, bounded
/// by `dial_timeout`, on a runtime of its own: `lb-daemon --check` tells a settings error
/// (refused) from an etcd that is merely not reachable from where the check runs.
pub fn reach(cfg: &FleetConfig) -> anyhow::Result<Reach> {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let store = EtcdStore::new(cfg, runtime.handle().clone())?;
    let root = super::records::Keys::new(&cfg.cluster).root().to_owned();
    let result = std::thread::scope(|s| s.spawn(|| store.get(&root)).join());
    drop(store);
    Ok(match result {
        Ok(Ok(_)) => Reach::Ok,
        Ok(Err(StoreError::Unavailable(why))) if config_hint(&why).is_none() => Reach::Unreachable(why),
        Ok(Err(StoreError::Unavailable(why) | StoreError::Failed(why))) => Reach::Refused(why),
        Ok(Err(e)) => Reach::Refused(e.to_string()),
        Err(_) => Reach::Refused("the etcd check panicked".into()),
    })
}

impl EtcdStore {
    /// A store for `cfg` on `handle`'s runtime. Reads the TLS files and the password now (a
    /// missing file fails the daemon's start with its name); connects on first use.
    pub fn new(cfg: &FleetConfig, handle: Handle) -> anyhow::Result<Self> {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(cfg.dial_timeout)
            .with_keep_alive(cfg.dial_timeout, cfg.dial_timeout)
            .with_keep_alive_while_idle(true);
        if let (Some(user), Some(password)) = (&cfg.user, cfg.password()?) {
            // etcd's tokens expire (5 min by default) and vanish with an etcd restart: get a new
            // one when etcd says so, instead of failing every call from then on.
            options = options.with_user(user.clone(), password).with_auto_token_refresh(true);
        }
        if cfg.tls() {
            let read = |p: &std::path::Path, what: &str| {
                std::fs::read(p).map_err(|e| anyhow::anyhow!("reading fleet.{what} {}: {e}", p.display()))
            };
            let mut tls = TlsOptions::new();
            if let Some(ca) = &cfg.ca_file {
                tls = tls.ca_certificate(Certificate::from_pem(read(ca, "ca_file")?));
            }
            if let (Some(cert), Some(key)) = (&cfg.cert_file, &cfg.key_file) {
                tls = tls.identity(Identity::from_pem(read(cert, "cert_file")?, read(key, "key_file")?));
            }
            options = options.with_tls(tls);
        }
        Ok(Self {
            endpoints: cfg.endpoints.clone(),
            options,
            handle,
            timeout: cfg.dial_timeout,
            lease_ttl: cfg.lease_ttl.as_secs().max(1) as i64,
            client: Mutex::new(None),
            lease: Mutex::new(None),
        })
    }

    /// The connected client (connecting now when there is none).
    fn client(&self) -> Result<Client, StoreError> {
        let mut slot = self.client.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let connect = Client::connect(self.endpoints.clone(), Some(self.options.clone()));
        let client = self.bounded(connect)?;
        *slot = Some(client.clone());
        Ok(client)
    }

    /// Runs `f` on the runtime, bounded by the timeout.
    fn bounded<T>(&self, f: impl Future<Output = Result<T, etcd_client::Error>>) -> Result<T, StoreError> {
        // The timer is created inside the runtime (a plain thread has no timer of its own).
        let timeout = self.timeout;
        match self.handle.block_on(async move { tokio::time::timeout(timeout, f).await }) {
            Ok(r) => r.map_err(map_err),
            Err(_) => Err(StoreError::Unavailable(format!(
                "no answer within {}",
                humantime::format_duration(self.timeout)
            ))),
        }
    }

    /// A call with the client; an unreachable etcd drops the client so the next call
    /// connects again.
    fn call<T, F, Fut>(&self, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let client = self.client()?;
        let r = self.bounded(f(client));
        if matches!(r, Err(StoreError::Unavailable(_))) {
            *self.client.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
        r
    }

    fn grant(&self) -> Result<i64, StoreError> {
        let ttl = self.lease_ttl;
        let id = self.call(|mut c| async move { c.lease_grant(ttl, None).await })?.id();
        *self.lease.lock().unwrap_or_else(|e| e.into_inner()) = Some(id);
        Ok(id)
    }
}

fn kv_of(kv: &etcd_client::KeyValue) -> Option<Kv> {
    Some(Kv {
        key: kv.key_str().ok()?.to_string(),
        value: kv.value_str().ok()?.to_string(),
        mod_revision: kv.mod_revision(),
    })
}

impl DesiredStore for EtcdStore {
    fn get(&self, key: &str) -> Result<(Option<Kv>, i64), StoreError> {
        let key = key.to_string();
        let r = self.call(|mut c| async move { c.get(key, None).await })?;
        let revision = r.header().map_or(0, |h| h.revision());
        Ok((r.kvs().first().and_then(kv_of), revision))
    }

    fn get_prefix(&self, prefix: &str) -> Result<Snapshot, StoreError> {
        let prefix = prefix.to_string();
        let r =
            self.call(|mut c| async move { c.get(prefix, Some(GetOptions::new().with_prefix())).await })?;
        let revision = r.header().map_or(0, |h| h.revision());
        Ok(Snapshot { kvs: r.kvs().iter().filter_map(kv_of).collect(), revision })
    }

    fn commit(&self, txn: &Txn) -> Result<Option<i64>, StoreError> {
        let compares: Vec<EtcdCompare> = txn
            .compares
            .iter()
            .map(|c| match c {
                Compare::ModRevision(key, rev) => {
                    EtcdCompare::mod_revision(key.as_str(), CompareOp::Equal, *rev)
                }
            })
            .collect();
        let puts: Vec<TxnOp> =
            txn.puts.iter().map(|(k, v)| TxnOp::put(k.as_str(), v.as_str(), None)).collect();
        let t = EtcdTxn::new().when(compares).and_then(puts);
        let r = self.call(|mut c| async move { c.txn(t).await })?;
        Ok(r.succeeded().then(|| r.header().map_or(0, |h| h.revision())))
    }

    fn put_leased(&self, key: &str, value: &str, also: &[(String, String)]) -> Result<i64, StoreError> {
        let lease = self.lease.lock().unwrap_or_else(|e| e.into_inner()).to_owned();
        let lease = match lease {
            Some(id) => id,
            None => self.grant()?,
        };
        let put = |id: i64| {
            let mut ops = vec![TxnOp::put(key, value, Some(PutOptions::new().with_lease(id)))];
            ops.extend(also.iter().map(|(k, v)| TxnOp::put(k.as_str(), v.as_str(), None)));
            let t = EtcdTxn::new().and_then(ops);
            self.call(move |mut c| async move { c.txn(t).await })
        };
        let r = match put(lease) {
            // The lease expired (etcd was away longer than its TTL): a new one.
            Err(StoreError::Failed(why)) if why.contains("lease not found") => put(self.grant()?)?,
            other => other?,
        };
        Ok(r.header().map_or(0, |h| h.revision()))
    }

    fn keep_alive(&self) -> Result<bool, StoreError> {
        let Some(id) = *self.lease.lock().unwrap_or_else(|e| e.into_inner()) else { return Ok(false) };
        match self.call(|mut c| async move { c.lease_keep_alive(id).await }) {
            Ok(_) => Ok(true),
            Err(StoreError::Unavailable(why)) if why.contains("lease not found") => {
                *self.lease.lock().unwrap_or_else(|e| e.into_inner()) = None;
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    fn get_prefix_desc(
        &self,
        prefix: &str,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Kv>, StoreError> {
        let prefix = prefix.to_string();
        let options = GetOptions::new()
            .with_sort(SortTarget::Key, SortOrder::Descend)
            .with_limit(i64::try_from(limit).unwrap_or(i64::MAX));
        // Keys in [prefix, before) or, for the first page, every key under the prefix.
        let options = match before {
            Some(b) => options.with_range(b),
            None => options.with_prefix(),
        };
        let r = self.call(|mut c| async move { c.get(prefix, Some(options)).await })?;
        Ok(r.kvs().iter().filter_map(kv_of).collect())
    }

    fn watch(&self, prefix: &str, from: i64) -> Result<Box<dyn Feed>, StoreError> {
        let prefix = prefix.to_string();
        let options = WatchOptions::new().with_prefix().with_start_revision(from);
        let stream = self.call(|mut c| async move { c.watch(prefix, Some(options)).await })?;
        Ok(Box::new(EtcdFeed { stream, handle: self.handle.clone() }))
    }
}

/// A running etcd watch.
struct EtcdFeed {
    stream: WatchStream,
    handle: Handle,
}

impl Feed for EtcdFeed {
    fn next(&mut self, wait: Duration) -> Result<Option<Vec<Event>>, StoreError> {
        let stream = &mut self.stream;
        let message =
            match self.handle.block_on(async move { tokio::time::timeout(wait, stream.message()).await }) {
                Err(_) => return Ok(None),
                Ok(m) => m.map_err(map_err)?,
            };
        let Some(resp) = message else {
            return Err(StoreError::Unavailable("the watch stream ended".into()));
        };
        if resp.canceled() {
            if resp.compact_revision() > 0 {
                return Err(StoreError::Compacted(resp.compact_revision()));
            }
            return Err(StoreError::Unavailable(format!("watch cancelled: {}", resp.cancel_reason())));
        }
        let events: Vec<Event> = resp
            .events()
            .iter()
            .filter_map(|e| {
                let kv = e.kv()?;
                Some(match e.event_type() {
                    EventType::Put => Event::Put(kv_of(kv)?),
                    EventType::Delete => {
                        Event::Delete { key: kv.key_str().ok()?.to_string(), revision: kv.mod_revision() }
                    }
                })
            })
            .collect();
        Ok((!events.is_empty()).then_some(events))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_errors_name_the_setting_and_count_as_unavailable() {
        let cases = [
            (
                "InvalidArgument: etcdserver: authentication failed, invalid user ID or password",
                "fleet.user and fleet.password_file",
            ),
            ("transport error: invalid peer certificate: UnknownIssuer", "fleet.ca_file"),
            ("received fatal alert: CertificateRequired", "fleet.cert_file"),
            ("PermissionDenied: etcdserver: permission denied", "readwrite"),
        ];
        for (message, setting) in cases {
            match with_hint(StoreError::Failed(message.into())) {
                StoreError::Unavailable(why) => {
                    assert!(why.starts_with(message) && why.contains(setting), "{why}")
                }
                other => panic!("{message}: {other:?}"),
            }
        }
        // An outage stays what it is.
        let down = StoreError::Unavailable("tcp connect error: Connection refused (os error 111)".into());
        assert_eq!(with_hint(down.clone()), down);
        let failed = StoreError::Failed("InvalidArgument: etcdserver: request is too large".into());
        assert_eq!(with_hint(failed.clone()), failed);
    }

    #[test]
    fn an_error_is_described_with_its_causes_once() {
        let inner = std::io::Error::other("invalid peer certificate: UnknownIssuer");
        let outer = anyhow::Error::new(inner).context("error trying to connect");
        let e: &(dyn std::error::Error + 'static) = outer.as_ref();
        assert_eq!(describe(e), "error trying to connect: invalid peer certificate: UnknownIssuer");
    }
}
