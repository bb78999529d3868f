//! What the daemon runs: the HTTP listeners, the realtime listener, the AMI gateway and the
//! SIP edge are each a [`Subsystem`], started and reloaded the same way.
//!
//! A start or a reload is two passes over every subsystem. [`Subsystem::prepare`] does all that
//! can fail (read the section, load TLS files, bind changed addresses) and changes nothing that
//! serves; [`Subsystem::commit`] puts the result in force and cannot fail. So a reload that
//! fails anywhere is dropped as a whole (the listeners it bound close with it) and the old
//! configuration keeps serving. [`Subsystem::stop`] begins a graceful stop at shutdown.
//!
//! This module sits in the base layer, below the features that implement the trait: a feature
//! sees only its own configuration section (`Subsystem::Config`), never the whole file, and
//! [`manage`] pairs it with the function that cuts that section out of the top-level
//! configuration, so the daemon holds every subsystem in one list.

use std::any::Any;
use std::net::SocketAddr;

use futures_util::future::BoxFuture;
use std::future::Future;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::error;

use crate::tls::TlsError;

/// Why a subsystem cannot take a configuration.
#[derive(Debug, thiserror::Error)]
pub enum SubsystemError {
    #[error("{key}: cannot listen on {addr}: {source}")]
    Bind {
        key: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS for [{section}]: {source}")]
    Tls {
        section: &'static str,
        source: TlsError,
    },
    #[error("{0}")]
    Other(String),
}

/// What a subsystem starts its tasks with.
#[derive(Debug, Clone)]
pub struct Host {
    /// Every task goes here, so that shutdown can wait for them.
    pub tracker: TaskTracker,
    /// Cancelled at shutdown.
    pub shutdown: CancellationToken,
}

/// A part of the daemon that a configuration starts, changes and removes.
pub trait Subsystem: Send + Sync + 'static {
    /// The part of the configuration it reads (its section, `None` when the section is absent).
    type Config: Send + 'static;
    /// What `prepare` built and bound, for `commit`.
    type Prepared: Send + 'static;

    /// Everything that can fail, against what runs now; nothing that serves changes.
    fn prepare(
        &self,
        config: Self::Config,
    ) -> impl Future<Output = Result<Self::Prepared, SubsystemError>> + Send;

    /// Puts `prepared` in force: starts, swaps or closes what runs.
    fn commit(&mut self, prepared: Self::Prepared, host: &Host);

    /// Stops accepting and ends what runs, gracefully (shutdown).
    fn stop(&mut self);
}

/// What `prepare` returned, kept opaque between the two passes.
pub struct Staged(Box<dyn Any + Send>);

/// A subsystem as the daemon holds it: fed the whole configuration `C`.
pub trait Managed<C>: Send + Sync {
    fn prepare<'a>(&'a self, config: &'a C) -> BoxFuture<'a, Result<Staged, SubsystemError>>;
    fn commit(&mut self, staged: Staged, host: &Host);
    fn stop(&mut self);
}

struct Adapter<S: Subsystem, C> {
    inner: S,
    section: fn(&C) -> S::Config,
}

impl<S: Subsystem, C: Sync + 'static> Managed<C> for Adapter<S, C> {
    fn prepare<'a>(&'a self, config: &'a C) -> BoxFuture<'a, Result<Staged, SubsystemError>> {
        let section = (self.section)(config);
        Box::pin(async move {
            let prepared = self.inner.prepare(section).await?;
            Ok(Staged(Box::new(prepared)))
        })
    }

    fn commit(&mut self, staged: Staged, host: &Host) {
        match staged.0.downcast::<S::Prepared>() {
            Ok(prepared) => self.inner.commit(*prepared, host),
            // Only this adapter's prepare makes what reaches its commit.
            Err(_) => error!("a subsystem was handed another subsystem's preparation; ignored"),
        }
    }

    fn stop(&mut self) {
        self.inner.stop();
    }
}

/// `subsystem`, reading the section `section` cuts out of the whole configuration.
pub fn manage<S: Subsystem, C: Sync + 'static>(
    subsystem: S,
    section: fn(&C) -> S::Config,
) -> Box<dyn Managed<C>> {
    Box::new(Adapter {
        inner: subsystem,
        section,
    })
}

/// A listener in service: its address as configured, and the token that stops its loop.
#[derive(Debug)]
pub struct Running {
    pub addr: SocketAddr,
    pub stop: CancellationToken,
}

/// Binds `wanted` unless `running` already listens there (`None`: keep it). `key` names the
/// setting in the error.
pub async fn bind_changed(
    key: &'static str,
    wanted: SocketAddr,
    running: Option<&Running>,
) -> Result<Option<TcpListener>, SubsystemError> {
    if running.is_some_and(|r| r.addr == wanted) {
        return Ok(None);
    }
    TcpListener::bind(wanted)
        .await
        .map(Some)
        .map_err(|source| SubsystemError::Bind {
            key,
            addr: wanted,
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_address_in_use_names_its_setting_and_a_running_one_is_kept() {
        let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = taken.local_addr().unwrap();
        let err = bind_changed("ami.listen", addr, None).await.unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with(&format!("ami.listen: cannot listen on {addr}: ")),
            "{text}"
        );
        let running = Running {
            addr,
            stop: CancellationToken::new(),
        };
        assert!(bind_changed("ami.listen", addr, Some(&running))
            .await
            .unwrap()
            .is_none());
    }

    /// Records what it is asked to do.
    struct Recorder(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

    impl Subsystem for Recorder {
        type Config = Option<u16>;
        type Prepared = u16;

        async fn prepare(&self, config: Option<u16>) -> Result<u16, SubsystemError> {
            config.ok_or_else(|| SubsystemError::Other("no port".into()))
        }

        fn commit(&mut self, prepared: u16, _host: &Host) {
            self.0.lock().unwrap().push(format!("commit {prepared}"));
        }

        fn stop(&mut self) {
            self.0.lock().unwrap().push("stop".into());
        }
    }

    #[tokio::test]
    async fn managed_subsystems_see_their_section_only() {
        struct Whole {
            port: Option<u16>,
        }
        let log = std::sync::Arc::default();
        let mut managed = manage(Recorder(std::sync::Arc::clone(&log)), |w: &Whole| w.port);
        let host = Host {
            tracker: TaskTracker::new(),
            shutdown: CancellationToken::new(),
        };
        let staged = managed.prepare(&Whole { port: Some(7) }).await.unwrap();
        managed.commit(staged, &host);
        let err = managed.prepare(&Whole { port: None }).await;
        assert_eq!(err.err().map(|e| e.to_string()).as_deref(), Some("no port"));
        managed.stop();
        assert_eq!(*log.lock().unwrap(), ["commit 7", "stop"]);
    }
}
