//! The control-plane application: builds the API, dispatcher and ledger from
//! settings and runs them until shutdown.

use cardfleet_schemas::bus::Bus;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::{self, AppState};
use crate::credentials::MasterKey;
use crate::metrics::Metrics;
use crate::services::dispatcher::Dispatcher;
use crate::services::gauges::GaugeRefresher;
use crate::services::job_gate::JobGate;
use crate::services::leases::LeaseKeeper;
use crate::services::ledger::Ledger;
use crate::settings::Settings;
use crate::store::Store;

/// Renders further metrics in the Prometheus text format.
pub type MetricsSource = Arc<dyn Fn() -> String + Send + Sync>;

/// A part of the control plane that `serve --only` can select.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Component {
    Api,
    Dispatcher,
    Ledger,
}

impl Component {
    pub const ALL: [Component; 3] = [Component::Api, Component::Dispatcher, Component::Ledger];
}

#[derive(Debug)]
pub struct Application {
    api: Option<(TcpListener, Router)>,
    /// HTTPS for the API listener (`http.tls`); plain HTTP when `None`.
    api_tls: Option<axum_server::tls_rustls::RustlsConfig>,
    header_timeout: Duration,
    metrics: Option<(TcpListener, Router)>,
    dispatcher: Option<Dispatcher>,
    ledger: Option<Ledger>,
    gauges: Option<GaugeRefresher>,
    leases: Option<LeaseKeeper>,
    job_gate: Option<JobGate>,
    store: Store,
}

impl Application {
    /// Builds the fleet-mode control plane, on RabbitMQ at `amqp.url`.
    pub async fn build(settings: &Settings, components: &[Component]) -> anyhow::Result<Self> {
        Self::build_on(
            settings,
            components,
            Bus::Amqp(settings.amqp.endpoint()),
            None,
        )
        .await
    }

    /// Builds the control plane on a given bus (standalone mode: in-process);
    /// `more_metrics` adds to the metrics page (standalone: the worker's).
    pub async fn build_on(
        settings: &Settings,
        components: &[Component],
        bus: Bus,
        more_metrics: Option<MetricsSource>,
    ) -> anyhow::Result<Self> {
        let store = Store::connect(
            &settings.database.url,
            settings.database.max_connections,
            settings.database.migrate_on_start,
        )
        .await
        .with_context(|| "cannot connect to the database (database.url)")?;
        if settings.database.migrate_on_start {
            store.migrate().await.context("database migration failed")?;
        }
        let profiles = Arc::new(
            cardfleet_schemas::profile::load_profiles(settings.profiles.dir.as_deref())
                .context("loading card profiles (profiles.dir)")?,
        );
        let cipher = settings.credentials.cipher()?;
        let master_key = MasterKey::from_hex(&settings.credentials.master_key)?;
        let metrics = Metrics::new();
        let reconnect_max = Duration::from_secs(settings.amqp.reconnect_max_seconds.max(1));

        let state = AppState {
            store: store.clone(),
            profiles: profiles.clone(),
            cipher: cipher.clone(),
            metrics: metrics.clone(),
            max_batch_cards: settings.http.max_batch_cards,
            bus: Some(bus.clone()),
            events_poll: Duration::from_millis(250),
            tokens: settings.tokens.clone(),
            ready: api::ready::ReadyCache::new(Duration::from_secs(2)),
        };
        let api = if components.contains(&Component::Api) {
            let listener = TcpListener::bind(settings.http.listen)
                .await
                .with_context(|| {
                    format!("cannot listen on {} (http.listen)", settings.http.listen)
                })?;
            Some((listener, api::router(state, &settings.http)))
        } else {
            None
        };
        let api_tls = api::tls::server_config(&settings.http.tls)?;
        let metrics_server = match settings.metrics.listen {
            Some(addr) => {
                let listener = TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen on {addr} (metrics.listen)"))?;
                let m = metrics.clone();
                let router = Router::new().route(
                    "/metrics",
                    get(move || {
                        let mut page = m.render();
                        if let Some(more) = &more_metrics {
                            page.push_str(&more());
                        }
                        async move { ([("content-type", "text/plain; version=0.0.4")], page) }
                    }),
                );
                Some((listener, router))
            }
            None => None,
        };
        let dispatcher = components
            .contains(&Component::Dispatcher)
            .then(|| Dispatcher {
                store: store.clone(),
                bus: bus.clone(),
                delivery_limit: settings.amqp.delivery_limit,
                batch_size: settings.dispatcher.batch_size,
                poll_interval: Duration::from_millis(settings.dispatcher.poll_interval_ms),
                reconnect_max,
                cipher: cipher.clone(),
                master_key: master_key.clone(),
                profiles: profiles.clone(),
                metrics: metrics.clone(),
            });
        let ledger = components.contains(&Component::Ledger).then(|| Ledger {
            store: store.clone(),
            bus: bus.clone(),
            batch_size: settings.ledger.batch_size,
            batch_wait: Duration::from_millis(settings.ledger.batch_wait_ms),
            reconnect_max,
            metrics: metrics.clone(),
            rack_keys: Default::default(),
        });
        let gauges = (settings.metrics.refresh_seconds > 0).then(|| GaugeRefresher {
            store: store.clone(),
            bus: bus.clone(),
            interval: Duration::from_secs(settings.metrics.refresh_seconds),
            metrics: metrics.clone(),
        });
        // With the ledger, which applies what the racks say: leases mark the
        // jobs of silent racks, and workers' take-time checks are answered
        // (over RabbitMQ; in standalone mode the worker asks in-process).
        let with_ledger = components.contains(&Component::Ledger);
        let leases = (with_ledger && settings.ledger.rack_lease_seconds > 0).then(|| LeaseKeeper {
            store: store.clone(),
            lease: Duration::from_secs(settings.ledger.rack_lease_seconds),
            metrics: metrics.clone(),
        });
        let job_gate = match &bus {
            Bus::Amqp(endpoint) if with_ledger => Some(JobGate {
                store: store.clone(),
                endpoint: endpoint.clone(),
                reconnect_max,
                metrics: metrics.clone(),
            }),
            _ => None,
        };
        Ok(Self {
            leases,
            job_gate,
            api,
            api_tls,
            header_timeout: Duration::from_secs(settings.http.header_timeout_seconds),
            metrics: metrics_server,
            dispatcher,
            ledger,
            gauges,
            store,
        })
    }

    /// Port of the API listener (useful with `http.listen = 127.0.0.1:0`).
    pub fn port(&self) -> Option<u16> {
        self.api
            .as_ref()
            .and_then(|(l, _)| l.local_addr().ok())
            .map(|a| a.port())
    }

    pub fn metrics_port(&self) -> Option<u16> {
        self.metrics
            .as_ref()
            .and_then(|(l, _)| l.local_addr().ok())
            .map(|a| a.port())
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Runs every selected component until `shutdown` is cancelled.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let mut tasks = tokio::task::JoinSet::new();
        if let Some((listener, router)) = self.api {
            let token = shutdown.clone();
            let tls = self.api_tls;
            let header_timeout = self.header_timeout;
            tasks.spawn(async move {
                serve_api(listener, router, tls, header_timeout, token)
                    .await
                    .context("API server failed")
            });
        }
        for (listener, router) in self.metrics.into_iter() {
            let token = shutdown.clone();
            tasks.spawn(async move {
                axum::serve(listener, router)
                    .with_graceful_shutdown(async move { token.cancelled().await })
                    .await
                    .context("HTTP server failed")
            });
        }
        if let Some(d) = self.dispatcher {
            let token = shutdown.clone();
            tasks.spawn(async move {
                d.run(token).await;
                Ok(())
            });
        }
        if let Some(g) = self.gauges {
            let token = shutdown.clone();
            tasks.spawn(async move {
                g.run(token).await;
                Ok(())
            });
        }
        if let Some(k) = self.leases {
            let token = shutdown.clone();
            tasks.spawn(async move {
                k.run(token).await;
                Ok(())
            });
        }
        if let Some(g) = self.job_gate {
            let token = shutdown.clone();
            tasks.spawn(async move {
                g.run(token).await;
                Ok(())
            });
        }
        if let Some(l) = self.ledger {
            let token = shutdown.clone();
            tasks.spawn(async move {
                l.run(token).await;
                Ok(())
            });
        }
        let mut result = Ok(());
        while let Some(joined) = tasks.join_next().await {
            let outcome = joined.map_err(anyhow::Error::from).and_then(|r| r);
            if let Err(e) = outcome {
                tracing::error!(error = %e, "a component stopped with an error; shutting down");
                shutdown.cancel();
                result = Err(e);
            }
        }
        result
    }
}

/// Serves the API on `listener`, over TLS when `tls` is given, until
/// `shutdown`; slow clients get `header_timeout` to send their headers and
/// in-flight requests 10 s to finish.
async fn serve_api(
    listener: TcpListener,
    router: Router,
    tls: Option<axum_server::tls_rustls::RustlsConfig>,
    header_timeout: Duration,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let handle = axum_server::Handle::<std::net::SocketAddr>::new();
    let stopper = handle.clone();
    tokio::spawn(async move {
        shutdown.cancelled().await;
        stopper.graceful_shutdown(Some(Duration::from_secs(10)));
    });
    let mut server = axum_server::Server::from_listener(listener).handle(handle);
    server
        .http_builder()
        .http1()
        .header_read_timeout(Some(header_timeout));
    let service = router.into_make_service();
    match tls {
        Some(config) => {
            server
                .acceptor(axum_server::tls_rustls::RustlsAcceptor::new(config))
                .serve(service)
                .await
        }
        None => server.serve(service).await,
    }
}
