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
    PutOptions, TlsOptions, Txn as EtcdTxn, TxnOp, WatchOptions, WatchStream,
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
    match e {
        E::GRpcStatus(s) => match s.code() {
            tonic::Code::Unavailable
            | tonic::Code::DeadlineExceeded
            | tonic::Code::Cancelled
            | tonic::Code::Unknown => StoreError::Unavailable(s.message().to_string()),
            _ => StoreError::Failed(format!("{}: {}", s.code(), s.message())),
        },
        E::TransportError(_) | E::IoError(_) | E::WatchError(_) | E::LeaseKeepAliveError(_) => {
            StoreError::Unavailable(e.to_string())
        }
        other => StoreError::Failed(other.to_string()),
    }
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
            options = options.with_user(user.clone(), password);
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
        match self.handle.block_on(tokio::time::timeout(self.timeout, f)) {
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

    fn put_leased(&self, key: &str, value: &str) -> Result<i64, StoreError> {
        let lease = self.lease.lock().unwrap_or_else(|e| e.into_inner()).to_owned();
        let lease = match lease {
            Some(id) => id,
            None => self.grant()?,
        };
        let put = |id: i64| {
            let (key, value) = (key.to_string(), value.to_string());
            self.call(
                move |mut c| async move { c.put(key, value, Some(PutOptions::new().with_lease(id))).await },
            )
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
        let message = match self.handle.block_on(tokio::time::timeout(wait, self.stream.message())) {
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
