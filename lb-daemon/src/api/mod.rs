//! The management API: JSON over HTTP/1.1 on a Unix socket (and optionally TCP with a bearer
//! token). `model` holds the wire types and `client` the blocking client, both shared by the
//! daemon, `lbctl` and the tests (neither has an aya or tokio type in its interface);
//! `Control` is what the server asks of the daemon, `server` the HTTP side.

pub mod client;
pub mod model;
pub mod server;

use model::{
    ApiError, BackendOutcome, BackendRequest, DrainView, FleetView, HistoryEntry, ReloadOutcome,
    RollbackRequest, ServiceView, ShutdownRequest, SplitRequest, StatusView, SwitchOutcome, SwitchRequest,
    WatchView,
};

/// What the API server needs from the daemon. Implementations serialize mutations themselves;
/// every call is quick (map updates, no network), so the server may call them from async code.
/// `requester` names who asked, for the history.
pub trait Control: Send + Sync + 'static {
    /// Whole status.
    fn status(&self) -> Result<StatusView, ApiError>;
    /// One service by name (`None`: the only one, or an error naming the choices).
    fn service(&self, name: Option<&str>) -> Result<ServiceView, ApiError>;
    /// Makes `req.pool` active.
    fn switch(
        &self,
        service: Option<&str>,
        req: &SwitchRequest,
        requester: &str,
    ) -> Result<SwitchOutcome, ApiError>;
    /// Goes back to the previous active pool or split.
    fn rollback(
        &self,
        service: Option<&str>,
        req: &RollbackRequest,
        requester: &str,
    ) -> Result<SwitchOutcome, ApiError>;
    /// Splits new flows between pools.
    fn split(
        &self,
        service: Option<&str>,
        req: &SplitRequest,
        requester: &str,
    ) -> Result<SwitchOutcome, ApiError>;
    /// History, newest last, at most `limit` entries, optionally of one service.
    fn history(&self, service: Option<&str>, limit: usize) -> Result<Vec<HistoryEntry>, ApiError>;
    /// Re-reads the config file and applies it, or changes nothing and says why.
    fn reload(&self, requester: &str) -> Result<ReloadOutcome, ApiError>;
    /// Stops the daemon (after the response is sent).
    fn shutdown(&self, req: &ShutdownRequest, requester: &str) -> Result<(), ApiError>;
    /// Prometheus text exposition.
    fn metrics(&self) -> Result<String, ApiError>;
    /// Established flows per pool, counted from the flow table.
    fn drain(&self, service: Option<&str>) -> Result<DrainView, ApiError>;
    /// The watch of the service's last switch (`None` when there never was one).
    fn watch(&self, service: Option<&str>) -> Result<Option<WatchView>, ApiError>;
    /// The fleet as this host sees it (`None` without `[fleet]`).
    fn fleet(&self) -> Result<Option<FleetView>, ApiError> {
        Ok(None)
    }

    /// The fleet's history from etcd, newest last, at most `limit` entries, optionally of one
    /// service, each with the hosts that applied it (`None` without `[fleet]`: the daemon's own
    /// [`Control::history`] is the whole story then).
    fn fleet_history(
        &self,
        _service: Option<&str>,
        _limit: usize,
    ) -> Result<Option<Vec<model::HistoryItem>>, ApiError> {
        Ok(None)
    }

    /// Drains, disables, enables or re-weights one backend (of `service` when named, else
    /// found in every service by address).
    fn backend(
        &self,
        service: Option<&str>,
        req: &BackendRequest,
        requester: &str,
    ) -> Result<BackendOutcome, ApiError>;
}
