//! One writer among the replicas: a `coordination.k8s.io` Lease, held by
//! the replica that renewed it last and taken over by another only after
//! it has not been renewed for its duration. Every write carries the
//! Lease's resourceVersion, so two replicas never both think they won.
use std::time::Duration;

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::MicroTime,
    jiff::Timestamp,
};
use kube::{
    Api, Client,
    api::{ObjectMeta, PostParams},
};

/// How long a holder that stopped renewing keeps the Lease.
pub const DURATION: Duration = Duration::from_secs(15);
/// How often the holder renews (and the others try).
pub const RENEW: Duration = Duration::from_secs(5);

pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
}

impl Elector {
    pub fn new(client: Client, namespace: &str, name: &str, identity: &str) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.to_owned(),
            identity: identity.to_owned(),
        }
    }

    /// Takes or renews the Lease; whether we hold it now. API errors count
    /// as not holding it (a writer that cannot reach the API cannot write).
    pub async fn try_lead(&self) -> bool {
        match self.step().await {
            Ok(held) => held,
            Err(e) => {
                tracing::warn!(lease = %self.name, error = %e, "lease not renewed");
                false
            }
        }
    }

    async fn step(&self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let fresh = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..Default::default()
                },
                spec: Some(self.spec(now, 0, now)),
            };
            return match self.api.create(&PostParams::default(), &fresh).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let ours = spec.holder_identity.as_deref() == Some(self.identity.as_str());
        let duration = spec
            .lease_duration_seconds
            .map_or(DURATION, |s| Duration::from_secs(s.max(1) as u64));
        let expired = spec
            .renew_time
            .as_ref()
            .is_none_or(|t| now.duration_since(t.0).unsigned_abs() > duration && now > t.0);
        if !ours
            && !expired
            && spec
                .holder_identity
                .as_deref()
                .is_some_and(|h| !h.is_empty())
        {
            return Ok(false);
        }
        let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!ours);
        let acquired = if ours {
            spec.acquire_time.map_or(now, |t| t.0)
        } else {
            now
        };
        lease.spec = Some(self.spec(acquired, transitions, now));
        // replace() sends our resourceVersion: a concurrent taker gets 409.
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => {
                if !ours {
                    tracing::info!(lease = %self.name, identity = %self.identity, "took the lease");
                }
                Ok(true)
            }
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn spec(&self, acquired: Timestamp, transitions: i32, now: Timestamp) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(DURATION.as_secs() as i32),
            acquire_time: Some(MicroTime(acquired)),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions),
            ..Default::default()
        }
    }
}
