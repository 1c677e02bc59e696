//! The authentication layer: every request except the public ones (health,
//! reflection, connect-code exchange) must carry a valid bearer token. The
//! resulting [`Principal`] travels to handlers in the request extensions.
//! The same layer applies the server-wide [`Limits`]: requests in flight,
//! and the per-address rate of unauthenticated and failed calls.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::{Request, Status};

use super::limits::{Limits, peer_ip};
use super::observe::Actor;
use crate::service::{Caller, Machine, Principal, Service};

/// Paths reachable without a token.
fn is_public(path: &str) -> bool {
    path.starts_with("/grpc.health.v1.Health/") || path.starts_with("/grpc.reflection.") || is_exchange(path)
}

/// The one public call that does database work: it is rate limited per
/// address (health and reflection answer from memory).
fn is_exchange(path: &str) -> bool {
    path == "/oma.v1.RuntimeService/ExchangeConnectCode"
}

#[derive(Clone)]
pub struct AuthLayer {
    service: Arc<Service>,
    limits: Arc<Limits>,
}

impl AuthLayer {
    pub fn new(service: Arc<Service>, limits: Arc<Limits>) -> Self {
        AuthLayer { service, limits }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthMiddleware<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthMiddleware {
            inner,
            service: self.service.clone(),
            limits: self.limits.clone(),
        }
    }
}

#[derive(Clone)]
pub struct AuthMiddleware<S> {
    inner: S,
    service: Arc<Service>,
    limits: Arc<Limits>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for AuthMiddleware<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        // The clone is not ready: swap it in and use the one poll_ready
        // was called on (tower's documented pattern).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let service = self.service.clone();
        let limits = self.limits.clone();
        Box::pin(async move {
            // Held until the handler has answered (a stream's response
            // starts at once, so open streams do not hold slots).
            let _slot = match limits.admit() {
                Ok(slot) => slot,
                Err(status) => return Ok(status.into_http()),
            };
            let path = request.uri().path();
            if is_public(path) {
                if is_exchange(path)
                    && let Err(status) = limits.charge(peer_ip(&request))
                {
                    return Ok(status.into_http());
                }
                return inner.call(request).await;
            }
            let header = request
                .headers()
                .get(oma_proto::AUTHORIZATION_HEADER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            match service.authenticate(header.as_deref()).await {
                Ok(principal) => {
                    let actor = Actor::of(&principal);
                    request.extensions_mut().insert(principal);
                    let mut response = inner.call(request).await?;
                    response.extensions_mut().insert(actor);
                    Ok(response)
                }
                Err(error) => {
                    // A failed authentication counts against the address;
                    // past its rate the answer says so instead.
                    let status = limits
                        .charge(peer_ip(&request))
                        .err()
                        .unwrap_or_else(|| Status::from(error));
                    Ok(status.into_http())
                }
            }
        })
    }
}

/// The API-token caller of a request; machine tokens are refused.
pub fn caller<T>(request: &Request<T>) -> Result<Caller, Status> {
    match request.extensions().get::<Principal>() {
        Some(Principal::User(caller)) => Ok(caller.clone()),
        Some(Principal::Machine(_)) => Err(Status::permission_denied(
            "a machine token may only open the runtime stream; use an API token (oma_…)",
        )),
        None => Err(Status::unauthenticated("missing credentials")),
    }
}

/// The machine caller of a request; API tokens are refused.
pub fn machine<T>(request: &Request<T>) -> Result<Machine, Status> {
    match request.extensions().get::<Principal>() {
        Some(Principal::Machine(machine)) => Ok(machine.clone()),
        Some(Principal::User(_)) => Err(Status::permission_denied(
            "only a paired machine's token (sk_machine_…) may open the runtime stream",
        )),
        None => Err(Status::unauthenticated("missing credentials")),
    }
}
