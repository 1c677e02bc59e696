//! The authentication layer: every request except the public ones (health,
//! reflection, connect-code exchange) must carry a valid bearer token. The
//! resulting [`Principal`] travels to handlers in the request extensions.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::{Request, Status};

use crate::service::{Caller, Machine, Principal, Service};

/// Paths reachable without a token.
fn is_public(path: &str) -> bool {
    path.starts_with("/grpc.health.v1.Health/")
        || path.starts_with("/grpc.reflection.")
        || path == "/oma.v1.RuntimeService/ExchangeConnectCode"
}

#[derive(Clone)]
pub struct AuthLayer {
    service: Arc<Service>,
}

impl AuthLayer {
    pub fn new(service: Arc<Service>) -> Self {
        AuthLayer { service }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthMiddleware<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthMiddleware {
            inner,
            service: self.service.clone(),
        }
    }
}

#[derive(Clone)]
pub struct AuthMiddleware<S> {
    inner: S,
    service: Arc<Service>,
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
        Box::pin(async move {
            if is_public(request.uri().path()) {
                return inner.call(request).await;
            }
            let header = request
                .headers()
                .get(oma_proto::AUTHORIZATION_HEADER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            match service.authenticate(header.as_deref()).await {
                Ok(principal) => {
                    request.extensions_mut().insert(principal);
                    inner.call(request).await
                }
                Err(error) => Ok(Status::from(error).into_http()),
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
