//! The prober: while paused, asks the destination with backoff whether it takes requests
//! again, and lets one trial batch go first when it does.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::adapter::Adapter;

use super::state::{Flow, Shared};

/// Probes the destination with backoff while paused; when a probe passes, the sender goes
/// half-open (one trial batch first, [`Flow::Trial`]). The wait doubles after every failed
/// probe or trial, up to `PAUSE_PROBE_MAX_MS`, and starts again only once a batch goes through.
pub(crate) async fn run_prober<A: Adapter>(shared: Arc<Shared<A>>, shutdown: CancellationToken) {
    let mut flow = shared.flow.subscribe();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            r = flow.wait_for(|f| *f == Flow::Paused) => if r.is_err() { return },
        }
        shared.metrics.ready.set(0);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(shared.probe_wait()) => {}
            }
            if shared.adapter.probe().await {
                tracing::info!(
                    destination = shared.destination(),
                    "the probe passed: half-open, a trial batch goes first"
                );
                shared.start_trial();
                break;
            }
            shared.lengthen_probe_wait();
        }
    }
}
